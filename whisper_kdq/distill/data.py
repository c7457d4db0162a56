"""Training data: token labels with the Whisper prompt, batches by length, and the teacher cache.

The teacher's work is done once per utterance (`TeacherCache.fill`) and kept: its top-k next-token
log-probabilities, its decoder block outputs, and — when the student's encoder is frozen — the
encoder output the student decoder reads, so each training step runs only what is trained.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from whisper_kdq.data.audio import SAMPLE_RATE
from whisper_kdq.data.manifest import Utterance
from whisper_kdq.errors import UserError

NO_SPACE_LANGUAGES = {"ja", "zh", "th", "lo", "my", "km", "yue"}
PROMPT_LEN = 4  # <|startoftranscript|><|lang|><|transcribe|><|notimestamps|>
MAX_TOKENS = 448


def label_ids(tokenizer, text: str, language: str | None) -> list[int]:
    """`<|sot|><|lang|><|transcribe|><|notimestamps|> text <|eot|>` as token ids."""
    prompt = ["<|startoftranscript|>", f"<|{language or 'en'}|>", "<|transcribe|>", "<|notimestamps|>"]
    body = text.strip() if language in NO_SPACE_LANGUAGES else " " + text.strip()
    ids = tokenizer.convert_tokens_to_ids(prompt) + tokenizer.encode(body, add_special_tokens=False)
    ids.append(tokenizer.convert_tokens_to_ids("<|endoftext|>"))
    if len(ids) > MAX_TOKENS:
        raise UserError(f"transcript too long for Whisper ({len(ids)} tokens > {MAX_TOKENS}): {text[:40]!r}…")
    return ids


@dataclass
class Batch:
    ids: list[str]  # utterance ids
    features: torch.Tensor  # [B, mels, frames]
    decoder_input_ids: torch.Tensor  # [B, T]
    mask: torch.Tensor  # [B, T] bool: position t predicts a reference token (text or end-of-text)
    labels: torch.Tensor  # [B, T] next token at each position (-100 where masked out)

    def to(self, device: str) -> "Batch":
        return Batch(self.ids, self.features.to(device), self.decoder_input_ids.to(device), self.mask.to(device),
                     self.labels.to(device))


def make_batch(utterances: Sequence[Utterance], processor, texts: dict[str, str] | None = None) -> Batch:
    """Features and teacher-forcing tensors; `texts` replaces references (pseudo-labels)."""
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    feats = processor.feature_extractor([u.load() for u in utterances], sampling_rate=SAMPLE_RATE,
                                        return_tensors="pt").input_features
    seqs = [label_ids(tok, (texts or {}).get(u.id, u.text), u.language) for u in utterances]
    width = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), width), eot, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        inputs[i, :len(s) - 1] = torch.tensor(s[:-1])
        labels[i, PROMPT_LEN - 1:len(s) - 1] = torch.tensor(s[PROMPT_LEN:])
    return Batch([u.id for u in utterances], feats, inputs, labels != -100, labels)


def length_batches(utterances: Sequence[Utterance], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """Batches of similar transcript length (less padding), in a seeded random order per epoch.

    Pools of 50 batches are sorted by length, cut, and the batches shuffled: deterministic in
    (seed, epoch), so a resumed run sees exactly the batches the uninterrupted one would."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(utterances)))
    rng.shuffle(order)
    pool = batch_size * 50
    batches = []
    for start in range(0, len(order), pool):
        chunk = sorted(order[start:start + pool], key=lambda i: len(utterances[i].text))
        batches += [chunk[k:k + batch_size] for k in range(0, len(chunk), batch_size)]
    rng.shuffle(batches)
    return [b for b in batches if len(b) == batch_size] or batches[:1]


@dataclass
class TeacherOutputs:
    topk_logprobs: torch.Tensor  # [T, k] fp16: teacher log-probs of its k most likely tokens (temperature 1)
    topk_ids: torch.Tensor  # [T, k] int32
    decoder_hidden: torch.Tensor | None  # [L_T, T, d] fp16: output of every teacher decoder block
    logits_topk_raw: torch.Tensor  # [T, k] fp16: the raw teacher logits of the same tokens (any temperature)


class TeacherCache:
    """Per-utterance teacher outputs (and the frozen student encoder's output), computed once."""

    def __init__(self, teacher, top_k: int = 64, keep_hidden: bool = True, student_encoder=None,
                 share_encoder: bool = False) -> None:
        self.teacher = teacher
        self.top_k = top_k
        self.keep_hidden = keep_hidden
        self.student_encoder = student_encoder  # frozen: its output is cached too
        self.share_encoder = share_encoder  # the student's frozen encoder is the teacher's
        self.outputs: dict[str, TeacherOutputs] = {}
        self.encoder_out: dict[str, torch.Tensor] = {}
        self.teacher_s = 0.0  # seconds spent on teacher / frozen-encoder work

    def save(self, path) -> None:
        """Keep the teacher's work for the next run on the same data (same teacher, same k)."""
        from whisper_kdq.fileio import atomic_file

        with atomic_file(path) as tmp:
            torch.save({"top_k": self.top_k, "hidden": self.keep_hidden, "outputs": self.outputs,
                        "encoder_out": self.encoder_out if self.share_encoder else {}}, tmp)

    def load(self, path) -> int:
        """Reuse a saved cache when it fits this run; returns how many utterances it covered."""
        try:
            saved = torch.load(path, map_location="cpu", weights_only=False)
        except (OSError, RuntimeError, EOFError):
            return 0
        if saved["top_k"] != self.top_k or (self.keep_hidden and not saved["hidden"]):
            return 0
        self.outputs.update(saved["outputs"])
        if self.share_encoder:
            self.encoder_out.update(saved["encoder_out"])
        return len(saved["outputs"])

    def __contains__(self, uid: str) -> bool:
        teacher_ok = self.teacher is None or uid in self.outputs
        encoder_ok = self.student_encoder is None or uid in self.encoder_out
        return teacher_ok and encoder_ok

    @torch.inference_mode()
    def fill(self, batch: Batch, device: str) -> None:
        import time

        start = time.perf_counter()
        feats = batch.features.to(device)
        t_enc = None
        if self.teacher is not None and (any(u not in self.outputs for u in batch.ids) or self.share_encoder):
            t_enc = self.teacher.get_encoder()(feats).last_hidden_state
            out = self.teacher(encoder_outputs=(t_enc,), decoder_input_ids=batch.decoder_input_ids.to(device),
                               output_hidden_states=self.keep_hidden)
            logits = out.logits.float()
            values, idx = logits.topk(self.top_k, dim=-1)
            logprobs = values - torch.logsumexp(logits, dim=-1, keepdim=True)
            for i, uid in enumerate(batch.ids):
                n = int(batch.mask[i].nonzero().max()) + 1 if batch.mask[i].any() else 0
                hidden = torch.stack(out.decoder_hidden_states[1:])[:, i, :n].half().cpu() if self.keep_hidden else None
                self.outputs[uid] = TeacherOutputs(logprobs[i, :n].half().cpu(), idx[i, :n].int().cpu(), hidden,
                                                   values[i, :n].half().cpu())
        if self.student_encoder is not None:
            enc = t_enc if (self.share_encoder and t_enc is not None) else self.student_encoder(feats).last_hidden_state
            for i, uid in enumerate(batch.ids):
                self.encoder_out[uid] = enc[i].half().cpu()
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
            L, _, d = outs[0].decoder_hidden.shape
            hidden = torch.zeros((L, len(outs), T, d))
            for i, o in enumerate(outs):
                hidden[:, i, :o.decoder_hidden.shape[1]] = o.decoder_hidden.float()
            result["decoder_hidden"] = hidden.to(device)
        return result


def pseudo_labels(teacher_loaded, utterances: Sequence[Utterance], *, max_wer: float | None, batch_size: int,
                  device: str, progress: Callable[[int], None] | None = None) -> tuple[dict[str, str], list[str]]:
    """Teacher transcripts (greedy) to train on; with references, those whose WER against the
    reference exceeds `max_wer` are dropped (distil-whisper's filter). Returns (texts, dropped ids)."""
    from whisper_kdq.evaluate.decode import transcribe
    from whisper_kdq.evaluate.metrics import score

    out = transcribe(teacher_loaded.model, teacher_loaded.processor, utterances, batch_size=batch_size,
                     device=device, progress=progress)
    texts, dropped = {}, []
    for u, hyp in zip(utterances, out.hypotheses):
        if not hyp.strip():
            dropped.append(u.id)
            continue
        if max_wer is not None and u.text.strip():
            s = score([u.text], [hyp], u.language)
            err = s.cer if u.language in NO_SPACE_LANGUAGES else s.wer
            if err is None or err > max_wer:
                dropped.append(u.id)
                continue
        texts[u.id] = hyp
    return texts, dropped
