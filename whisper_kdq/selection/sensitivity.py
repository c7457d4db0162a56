"""The two losses the guided selection trades off, measured per unit on a calibration set.

- quantization loss of a unit: the mean KL divergence (over reference tokens, teacher-forced) from
  the float student's next-token distribution to the distribution of the same student with only
  that unit's weights quantized at the candidate bits: how much the model's output moves.
- distillation loss of a block: the normalised mean squared distance between the student block's
  output and the output of the teacher block it is matched to (restrained-dynamic: monotone map
  chosen by dynamic programming over the loss matrix, as distillation training uses).
"""

from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn.functional as F

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.distill.data import Batch, make_batch
from whisper_kdq.distill.matching import monotone_match
from whisper_kdq.quant.plan import candidate_tensors
from whisper_kdq.quant.schemes import QuantSpec, dequantize, quantize
from whisper_kdq.selection.units import Unit


def calibration_batches(dataset: Dataset, processor, batch_size: int = 8, device: str = "cpu") -> list[Batch]:
    """Log-mel features and teacher-forcing inputs of the calibration clips (reference transcripts)."""
    utts = dataset.utterances
    return [make_batch(utts[i:i + batch_size], processor).to(device) for i in range(0, len(utts), batch_size)]


def _log_probs(model, batch: Batch, encoder_out=None) -> torch.Tensor:
    out = model(input_features=None if encoder_out is not None else batch.features,
                encoder_outputs=(encoder_out,) if encoder_out is not None else None,
                decoder_input_ids=batch.decoder_input_ids)
    return F.log_softmax(out.logits.float(), dim=-1)[batch.mask]


@torch.inference_mode()
def quantization_losses(model, units: list[Unit], spec: QuantSpec, batches: list[Batch],
                        progress: Callable[[str], None] | None = None) -> None:
    """Fill `unit.quant_loss`: KL(float ‖ only-this-unit-quantized) per reference token, in nats."""
    model.eval()
    encoder = model.get_encoder()
    enc_out = [encoder(b.features).last_hidden_state for b in batches]
    ref = [_log_probs(model, b, e) for b, e in zip(batches, enc_out)]
    params = dict(model.named_parameters())
    for unit in units:
        if progress:
            progress(unit.name)
        rx = re.compile(unit.pattern)
        names = [n for n in candidate_tensors(params) if rx.search(n)]
        saved = {n: params[n].detach().clone() for n in names}
        try:
            # Swap the unit's weights for their quantize-dequantize in place (no model copy).
            for n in names:
                params[n].copy_(dequantize(quantize(saved[n].float(), spec, "mse")).to(params[n].dtype))
            total, count = 0.0, 0
            for b, e, p in zip(batches, enc_out, ref):
                # Units after the encoder reuse its float output: only the decoder runs again.
                e_q = encoder(b.features).last_hidden_state if unit.component in ("conv", "encoder") else e
                q = _log_probs(model, b, e_q)
                total += F.kl_div(q, p, log_target=True, reduction="sum").item()
                count += p.shape[0]
        finally:
            for n in names:
                params[n].copy_(saved[n])
        unit.quant_loss = total / max(count, 1)


def _hidden(model, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    out = model(input_features=batch.features, decoder_input_ids=batch.decoder_input_ids, output_hidden_states=True)
    # hidden_states[k + 1] is block k's output (the last one after the final layer norm).
    return list(out.encoder_hidden_states[1:]), list(out.decoder_hidden_states[1:])


@torch.inference_mode()
def distillation_losses(student, teacher, units: list[Unit], batches: list[Batch]) -> None:
    """Fill `unit.distill_loss` and `unit.teacher_layer` for the student's encoder and decoder blocks."""
    student.eval()
    teacher.eval()
    sums: dict[str, torch.Tensor] = {}
    for b in batches:
        s_enc, s_dec = _hidden(student, b)
        t_enc, t_dec = _hidden(teacher, b)
        mask = b.mask.unsqueeze(-1).float()
        for stack, s_h, t_h, m in (("encoder", s_enc, t_enc, None), ("decoder", s_dec, t_dec, mask)):
            cost = torch.zeros(len(s_h), len(t_h))
            for i, hs in enumerate(s_h):
                for j, ht in enumerate(t_h):
                    err = (hs - ht) ** 2
                    ref = ht ** 2
                    if m is not None:
                        err, ref = err * m, ref * m
                    cost[i, j] = err.sum() / ref.sum().clamp_min(1e-12)
            sums[stack] = sums.get(stack, 0) + cost / len(batches)
    for stack, cost in sums.items():
        match = monotone_match(cost)
        for unit in units:
            if unit.component == stack:
                unit.teacher_layer = match[unit.index]
                unit.distill_loss = float(cost[unit.index, unit.teacher_layer])
