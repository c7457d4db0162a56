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
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.quant.plan import candidate_tensors
from whisper_kdq.quant.schemes import QuantSpec, dequantize, quantize
from whisper_kdq.selection.units import Unit


@dataclass
class CalibrationBatch:
    features: torch.Tensor  # [B, mels, frames]
    decoder_input_ids: torch.Tensor  # [B, T]: prompt + text tokens
    mask: torch.Tensor  # [B, T] bool: positions whose next token is a reference token (not padding)


def calibration_batches(dataset: Dataset, processor, batch_size: int = 8, device: str = "cpu") -> list[CalibrationBatch]:
    """Log-mel features and teacher-forcing inputs (`<|sot|><|lang|><|transcribe|><|notimestamps|> text <|eot|>`)."""
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    batches = []
    utts = dataset.utterances
    for start in range(0, len(utts), batch_size):
        chunk = utts[start:start + batch_size]
        feats = processor.feature_extractor([u.load() for u in chunk], sampling_rate=16000,
                                            return_tensors="pt").input_features
        seqs = []
        for u in chunk:
            prompt = ["<|startoftranscript|>", f"<|{u.language or 'en'}|>", "<|transcribe|>", "<|notimestamps|>"]
            text = u.text.strip() if u.language in ("ja", "zh", "th", "lo", "my", "km") else " " + u.text.strip()
            seqs.append(tok.convert_tokens_to_ids(prompt) + tok.encode(text, add_special_tokens=False) + [eot])
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), eot, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.bool)
        for i, s in enumerate(seqs):
            ids[i, :len(s)] = torch.tensor(s)
            mask[i, 3:len(s) - 1] = True  # predictions of text tokens and of end-of-text
        batches.append(CalibrationBatch(feats.to(device), ids.to(device), mask.to(device)))
    return batches


def _log_probs(model, batch: CalibrationBatch, encoder_out=None) -> torch.Tensor:
    out = model(input_features=None if encoder_out is not None else batch.features,
                encoder_outputs=(encoder_out,) if encoder_out is not None else None,
                decoder_input_ids=batch.decoder_input_ids)
    return F.log_softmax(out.logits.float(), dim=-1)[batch.mask]


@torch.inference_mode()
def quantization_losses(model, units: list[Unit], spec: QuantSpec, batches: list[CalibrationBatch],
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


def _hidden(model, batch: CalibrationBatch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    out = model(input_features=batch.features, decoder_input_ids=batch.decoder_input_ids, output_hidden_states=True)
    # hidden_states[k + 1] is block k's output (the last one after the final layer norm).
    return list(out.encoder_hidden_states[1:]), list(out.decoder_hidden_states[1:])


def monotone_match(cost: torch.Tensor) -> list[int]:
    """Non-decreasing map student block i -> teacher block j minimising the summed cost (exact DP)."""
    n_s, n_t = cost.shape
    best = cost[0].clone()
    back = []
    for i in range(1, n_s):
        prefix, arg = torch.cummin(best, dim=0)  # best over teacher blocks <= j
        back.append(arg)
        best = prefix + cost[i]
    j = int(best.argmin())
    path = [j]
    for arg in reversed(back):
        j = int(arg[j])
        path.append(j)
    return path[::-1]


@torch.inference_mode()
def distillation_losses(student, teacher, units: list[Unit], batches: list[CalibrationBatch]) -> None:
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
