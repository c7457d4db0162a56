"""Training data: token labels with the Whisper prompt, batches by length, and the teacher cache.

The teacher's outputs themselves are cached by `distill.cache.TeacherCache`.
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
ENCODER_FRAMES = 1500  # 30 s at 20 ms per frame


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
    frames: torch.Tensor | None = None  # [B] encoder frames that hold audio (the rest is padding)

    def to(self, device: str) -> "Batch":
        return Batch(self.ids, self.features.to(device), self.decoder_input_ids.to(device), self.mask.to(device),
                     self.labels.to(device), self.frames)

    def frame_mask(self) -> torch.Tensor:
        """[B, F] bool over the first F = max(frames) encoder frames: True where there is audio."""
        n = int(self.frames.max())
        return torch.arange(n).unsqueeze(0) < self.frames.unsqueeze(1)


class FeatureMemo:
    """Each utterance's log-mel features and encoder frame count, computed once.

    A run of many epochs would otherwise recompute every clip's spectrogram each time it comes round
    (~26 ms a clip on a laptop core: as long as a whole training step on a GPU). Kept in float32, so
    a batch is bit-identical with or without the memo; past `max_bytes` new clips are computed and
    not kept. `window_s`: pad to an audio window shorter than 30 s (evaluate/window.py)."""

    def __init__(self, processor, max_bytes: int = 4 << 30, window_s: float | None = None) -> None:
        self.processor = processor
        self.max_bytes = max_bytes
        self.window_s = window_s
        self.bytes = 0
        self._kept: dict[str, tuple[torch.Tensor, int]] = {}

    def __len__(self) -> int:
        return len(self._kept)

    def __call__(self, utterances: Sequence[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """([B, mels, frames] features, [B] encoder frames holding audio)."""
        new = {u.id: u for u in utterances if u.id not in self._kept}
        fresh = dict(zip(new, zip(*_features(list(new.values()), self.processor, self.window_s)))) if new else {}
        for uid, (feats, frames) in fresh.items():
            if self.bytes + feats.nbytes <= self.max_bytes:
                # A copy: a row of the batch tensor would keep the whole batch alive, past `max_bytes`.
                self._kept[uid] = (feats.clone(), frames)
                self.bytes += feats.nbytes
        rows = [self._kept[u.id] if u.id in self._kept else fresh[u.id] for u in utterances]
        return torch.stack([f for f, _ in rows]), torch.tensor([n for _, n in rows])


def _features(utterances: Sequence[Utterance], processor, window_s: float | None = None
              ) -> tuple[torch.Tensor, list[int]]:
    audio = [u.load() for u in utterances]
    extractor, frames = processor.feature_extractor, ENCODER_FRAMES
    if window_s is not None:
        from whisper_kdq.evaluate.window import windowed_extractor

        try:
            extractor = windowed_extractor(extractor, window_s, audio)  # refuses a clip longer than the window
        except UserError as exc:
            longest = max(range(len(audio)), key=lambda i: len(audio[i]))
            raise UserError(f"{utterances[longest].source or utterances[longest].id}: {exc}") from None
        frames = extractor.nb_max_frames // 2
    feats = extractor(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    # One encoder frame per 320 samples (hop 160, then the stride-2 convolution), 1500 at most (30 s).
    return feats, [min(frames, max(1, math.ceil(len(a) / 320))) for a in audio]


def make_batch(utterances: Sequence[Utterance], processor, texts: dict[str, str] | None = None,
               features: FeatureMemo | None = None, window_s: float | None = None) -> Batch:
    """Features and teacher-forcing tensors; `texts` replaces references (pseudo-labels); `features`
    keeps each clip's spectrogram for the next epoch (and sets the window); `window_s` pads to an audio
    window shorter than 30 s."""
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    if features is not None:
        feats, frames = features(utterances)
    else:
        feats, counts = _features(utterances, processor, window_s)
        frames = torch.tensor(counts)
    seqs = [label_ids(tok, (texts or {}).get(u.id, u.text), u.language) for u in utterances]
    width = max(len(s) for s in seqs) - 1
    inputs = torch.full((len(seqs), width), eot, dtype=torch.long)
    labels = torch.full((len(seqs), width), -100, dtype=torch.long)
    for i, s in enumerate(seqs):
        inputs[i, :len(s) - 1] = torch.tensor(s[:-1])
        labels[i, PROMPT_LEN - 1:len(s) - 1] = torch.tensor(s[PROMPT_LEN:])
    return Batch([u.id for u in utterances], feats, inputs, labels != -100, labels, frames)


def rank_slice(batch: list[int], rank: int, world: int) -> list[int]:
    """This process's part of a global batch: every `world`-th item from `rank` (disjoint, covering)."""
    return batch[rank::world]


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


def __getattr__(name: str):
    """Teacher-cache files written before `cache.py` existed pickled `data.TeacherOutputs`."""
    if name == "TeacherOutputs":
        from whisper_kdq.distill.cache import TeacherOutputs

        return TeacherOutputs
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
