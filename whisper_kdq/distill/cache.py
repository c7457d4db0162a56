"""The teacher's work, done once per utterance and kept for every epoch (and, in a file, for later runs).

Per utterance: the teacher's top-k next-token log-probabilities and raw logits (KL on that support),
its decoder block outputs and — when the student's encoder trains — its encoder block outputs on
the frames that hold audio (hidden-state KD). When the student's encoder is frozen, its output is
cached too (shared with the teacher when it is the teacher's encoder), so a step runs only the
trained decoder.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch

from whisper_kdq.distill.data import Batch

__all__ = ["TeacherOutputs", "TeacherCache"]


@dataclass
class TeacherOutputs:
    topk_logprobs: torch.Tensor  # [T, k] fp16: teacher log-probs of its k most likely tokens (temperature 1)
    topk_ids: torch.Tensor  # [T, k] int32
    decoder_hidden: torch.Tensor | None  # [L_T, T, d] fp16: output of every teacher decoder block
    logits_topk_raw: torch.Tensor  # [T, k] fp16: the raw teacher logits of the same tokens (any temperature)
    encoder_hidden: torch.Tensor | None = None  # [L_T, F, d] fp16: encoder block outputs on the audio frames


class TeacherCache:
    """Per-utterance teacher outputs (and the frozen student encoder's output), computed once."""

    def __init__(self, teacher, top_k: int = 64, keep_hidden: bool = True, student_encoder=None,
                 share_encoder: bool = False, keep_encoder_hidden: bool = False,
                 window_s: float | None = None) -> None:
        self.teacher = teacher
        # The audio window the outputs were computed at; None is Whisper's 30 s.
        from whisper_kdq.evaluate.window import window_or_none

        self.window_s = window_or_none(window_s)
        self.top_k = top_k
        self.keep_hidden = keep_hidden
        self.keep_encoder_hidden = keep_encoder_hidden  # only when the student's encoder trains
        self.student_encoder = student_encoder  # frozen: its output is cached too
        self.share_encoder = share_encoder  # the student's frozen encoder is the teacher's
        self.outputs: dict[str, TeacherOutputs] = {}
        self.encoder_out: dict[str, torch.Tensor] = {}
        self.teacher_s = 0.0  # seconds spent on teacher / frozen-encoder work
        self._kept: dict | None = None  # a loaded file's teacher part, kept when this run has no teacher
        self._file_encoder_out: dict[str, torch.Tensor] = {}  # a loaded file's shared outputs, when not ours to use

    def save(self, path) -> None:
        """Keep the teacher's work for the next run on the same data (same teacher, same k). A run without
        the teacher (CE only, shared frozen encoder) adds its encoder outputs and keeps the file's teacher part."""
        from whisper_kdq.fileio import atomic_file

        teacher_part = {"top_k": self.top_k, "hidden": self.keep_hidden, "encoder_hidden": self.keep_encoder_hidden,
                        "outputs": {u: asdict(o) for u, o in self.outputs.items()}}  # plain tensors: no pickled classes
        if self.teacher is None:
            teacher_part = self._kept or {"top_k": None, "hidden": False, "encoder_hidden": False, "outputs": {}}
        with atomic_file(path) as tmp:
            # A student with its own frozen encoder writes back the teacher-encoder outputs the file held.
            shared = self.encoder_out if self.share_encoder else self._file_encoder_out
            torch.save({**teacher_part, "window_s": self.window_s, "encoder_out": shared}, tmp)

    def load(self, path) -> int:
        """Reuse a saved cache for what it holds that this run needs; returns how many entries it gave
        (`size()` counts the same way)."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError, AttributeError):
            return 0
        if saved.get("window_s") != self.window_s:  # every output differs; writing ours would erase the file's
            from whisper_kdq.errors import UserError
            from whisper_kdq.evaluate.window import window_name

            raise UserError(f"teacher cache {path} holds outputs for {window_name(saved.get('window_s'))}, this run "
                            f"reads {window_name(self.window_s)}: give it another --teacher-cache file")
        if self.share_encoder:  # the teacher's encoder output is the same whatever the decoder-side settings
            self.encoder_out.update(saved.get("encoder_out", {}))
        else:
            self._file_encoder_out = saved.get("encoder_out", {})
        if self.teacher is None:  # only the shared encoder's outputs are of use; the rest is written back
            self._kept = {k: saved[k] for k in ("top_k", "hidden", "encoder_hidden", "outputs") if k in saved}
            return self.size()
        if saved["top_k"] != self.top_k or (self.keep_hidden and not saved["hidden"]) \
                or (self.keep_encoder_hidden and not saved.get("encoder_hidden")):
            return self.size()
        # Files from before the plain-dict format hold TeacherOutputs objects (data.py resolves the old name).
        self.outputs.update({u: o if isinstance(o, TeacherOutputs) else TeacherOutputs(**o)
                             for u, o in saved["outputs"].items()})
        return self.size()

    def size(self) -> int:
        """Entries held: teacher outputs, plus the shared encoder's outputs (the ones a file keeps)."""
        return len(self.outputs) + (len(self.encoder_out) if self.share_encoder else 0)

    def __contains__(self, uid: str) -> bool:
        teacher_ok = self.teacher is None or uid in self.outputs
        encoder_ok = self.student_encoder is None or uid in self.encoder_out
        return teacher_ok and encoder_ok

    @torch.inference_mode()
    def fill(self, batch: Batch, device: str) -> None:
        start = time.perf_counter()
        feats = batch.features.to(device)
        t_enc = None
        missing_outputs = any(u not in self.outputs for u in batch.ids)
        missing_shared = self.share_encoder and any(u not in self.encoder_out for u in batch.ids)
        if self.teacher is not None and (missing_outputs or missing_shared):
            if self.share_encoder and not missing_shared and not self.keep_encoder_hidden:
                enc = None  # a CE-only run already left the shared encoder's output: only the decoder runs
                t_enc = torch.stack([self.encoder_out[u] for u in batch.ids]).to(device=device, dtype=feats.dtype)
            else:
                enc = self.teacher.get_encoder()(feats, output_hidden_states=self.keep_encoder_hidden)
                t_enc = enc.last_hidden_state
            out = self.teacher(encoder_outputs=(t_enc,), decoder_input_ids=batch.decoder_input_ids.to(device),
                               output_hidden_states=self.keep_hidden)
            logits = out.logits.float()
            values, idx = logits.topk(self.top_k, dim=-1)
            logprobs = values - torch.logsumexp(logits, dim=-1, keepdim=True)
            for i, uid in enumerate(batch.ids):
                n = int(batch.mask[i].nonzero().max()) + 1 if batch.mask[i].any() else 0
                hidden = torch.stack(out.decoder_hidden_states[1:])[:, i, :n].half().cpu() if self.keep_hidden else None
                enc_hidden = None
                if self.keep_encoder_hidden:
                    f = int(batch.frames[i])
                    enc_hidden = torch.stack(enc.hidden_states[1:])[:, i, :f].half().cpu()
                self.outputs[uid] = TeacherOutputs(logprobs[i, :n].half().cpu(), idx[i, :n].int().cpu(), hidden,
                                                   values[i, :n].half().cpu(), enc_hidden)
        if self.student_encoder is not None and any(u not in self.encoder_out for u in batch.ids):
            enc_out = t_enc if (self.share_encoder and t_enc is not None) else self.student_encoder(feats).last_hidden_state
            for i, uid in enumerate(batch.ids):
                self.encoder_out[uid] = enc_out[i].half().cpu()
        self.teacher_s += time.perf_counter() - start

    def stack(self, batch: Batch, device: str) -> dict:
        """The cached tensors of `batch`, padded to its length, on `device`."""
        T = batch.decoder_input_ids.shape[1]
        result: dict = {}
        if self.student_encoder is not None:
            result["encoder_out"] = torch.stack([self.encoder_out[u] for u in batch.ids]).float().to(device)
        if self.teacher is None:
            return result
        outs = [self.outputs[u] for u in batch.ids]
        k = self.top_k
        lp = torch.full((len(outs), T, k), -math.inf)
        raw = torch.zeros((len(outs), T, k))
        ids = torch.zeros((len(outs), T, k), dtype=torch.long)
        for i, o in enumerate(outs):
            n = o.topk_ids.shape[0]
            lp[i, :n], raw[i, :n], ids[i, :n] = o.topk_logprobs.float(), o.logits_topk_raw.float(), o.topk_ids.long()
        result.update(topk_logprobs=lp.to(device), topk_raw=raw.to(device), topk_ids=ids.to(device))
        if self.keep_hidden and outs[0].decoder_hidden is not None:
            result["decoder_hidden"] = _pad([o.decoder_hidden for o in outs], T).to(device)
        if self.keep_encoder_hidden and outs[0].encoder_hidden is not None:
            result["encoder_hidden"] = _pad([o.encoder_hidden for o in outs], int(batch.frames.max())).to(device)
        return result


def _pad(per_utterance: list[torch.Tensor], length: int) -> torch.Tensor:
    """[L, n_i, d] tensors -> one [L, B, length, d] float tensor, zero-padded."""
    L, _, d = per_utterance[0].shape
    out = torch.zeros((L, len(per_utterance), length, d))
    for i, h in enumerate(per_utterance):
        out[:, i, :h.shape[1]] = h.float()
    return out
