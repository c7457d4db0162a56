"""Batched decoding with the right language/task prompt per utterance.

Utterances are grouped by language (one prompt per batch), sorted by length within a language so
that batches waste little padding, and decoded greedily or with beam search. Two engines: the
transformers model itself, and the CTranslate2 engine for CTranslate2 directories.
"""

from __future__ import annotations

import time
import zlib
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from whisper_kdq.data.audio import SAMPLE_RATE
from whisper_kdq.data.manifest import Utterance
from whisper_kdq.errors import UserError
from whisper_kdq.evaluate.window import audio_window, windowed_extractor
from whisper_kdq.models.refs import quiet_transformers

TOKENS_PER_SECOND = 30
MAX_NEW_TOKENS = 440  # Whisper's 448 positions minus the prompt
# openai/whisper's temperature fallback: a clip whose output compresses too well (a repetition loop) or
# whose mean log-probability is too low is decoded again by sampling at the next temperature. transformers
# measures compression on token ids (hence 1.35); for CTranslate2 we measure the text, as openai/whisper
# and faster-whisper do (2.4).
FALLBACK = {"temperature": (0.0, 0.2, 0.4, 0.6, 0.8, 1.0), "compression_ratio_threshold": 1.35,
            "logprob_threshold": -1.0}
TEXT_COMPRESSION_THRESHOLD = 2.4
ProgressFn = Callable[[int], None]  # called with the number of utterances just finished


@dataclass
class Transcripts:
    hypotheses: list[str]  # in the order of the input utterances
    wall_s: float  # decoding time, feature extraction included
    audio_s: float  # total audio duration

    @property
    def rtf(self) -> float:
        return self.wall_s / self.audio_s if self.audio_s else float("nan")


def token_limit(clips: Sequence[np.ndarray]) -> int:
    """New tokens allowed for a batch: a runaway guard. Speech never needs 30 tokens per second,
    while a weak (e.g. barely trained) model stuck in a loop would otherwise decode to the
    448-token limit on every clip."""
    seconds = max(len(a) for a in clips) / SAMPLE_RATE
    return min(MAX_NEW_TOKENS, int(16 + TOKENS_PER_SECOND * seconds))


def _batches(utterances: Sequence[Utterance], batch_size: int) -> list[list[int]]:
    """Indices grouped by language, longest first within each language, cut into batches."""
    by_language: dict[str | None, list[int]] = {}
    for i, utt in enumerate(utterances):
        by_language.setdefault(utt.language, []).append(i)
    lengths = [len(u.load()) for u in utterances]
    batches = []
    for indices in by_language.values():
        indices.sort(key=lambda i: -lengths[i])
        batches += [indices[k : k + batch_size] for k in range(0, len(indices), batch_size)]
    return batches


def transcribe(
    model,
    processor,
    utterances: Sequence[Utterance],
    *,
    batch_size: int = 8,
    beam_size: int = 1,
    device: str = "cpu",
    fallback: bool = False,
    seed: int = 0,
    window_s: float | None = None,
    progress: ProgressFn | None = None,
) -> Transcripts:
    """Transcribe with a transformers `WhisperForConditionalGeneration`; `fallback` re-decodes the clips
    that loop or are unsure by sampling at rising temperatures (seeded per batch: reproducible);
    `window_s` reads a shorter audio window than 30 s (evaluate/window.py)."""
    audio = [u.load() for u in utterances]
    extractor = _extractor(processor, audio, window_s)
    with audio_window(model, window_s) if window_s is not None else nullcontext():
        return _transcribe(model, processor, extractor, utterances, audio, batch_size=batch_size,
                           beam_size=beam_size, device=device, fallback=fallback, seed=seed, progress=progress)


def _extractor(processor, audio: Sequence[np.ndarray], window_s: float | None):
    """The feature extractor for Whisper's window, or for a shorter one that every clip fits."""
    if window_s is None:
        return processor.feature_extractor
    return windowed_extractor(processor.feature_extractor, window_s, audio)


def _transcribe(model, processor, extractor, utterances, audio, *, batch_size, beam_size, device, fallback, seed,
                progress) -> Transcripts:
    multilingual = bool(getattr(model.generation_config, "is_multilingual", True))
    hypotheses: list[str] = [""] * len(utterances)
    start = time.perf_counter()
    for batch in _batches(utterances, batch_size):
        features = extractor(
            [audio[i] for i in batch], sampling_rate=SAMPLE_RATE, return_tensors="pt"
        ).input_features.to(device=device, dtype=next(model.parameters()).dtype)
        language = utterances[batch[0]].language
        kwargs = {"task": "transcribe", "language": language} if multilingual else {}
        limit = token_limit([audio[i] for i in batch])
        kwargs.update(FALLBACK if fallback else {"do_sample": False})
        # Seeded per batch, in a fork of the random state: reproducible, and the caller's state untouched.
        with torch.random.fork_rng(devices=None if device.startswith("cuda") else []), torch.inference_mode(), \
                quiet_transformers():
            torch.manual_seed(seed + batch[0])
            tokens = model.generate(features, num_beams=beam_size, max_new_tokens=limit, **kwargs)
        texts = processor.tokenizer.batch_decode(tokens, skip_special_tokens=True)
        for i, text in zip(batch, texts):
            hypotheses[i] = text.strip()
        if progress:
            progress(len(batch))
    wall = time.perf_counter() - start
    return Transcripts(hypotheses, wall, sum(len(a) for a in audio) / SAMPLE_RATE)


def transcribe_ct2(
    model_dir: Path,
    processor,
    utterances: Sequence[Utterance],
    *,
    batch_size: int = 8,
    beam_size: int = 1,
    device: str = "cpu",
    compute_type: str = "default",
    fallback: bool = False,
    seed: int = 0,
    window_s: float | None = None,
    progress: ProgressFn | None = None,
) -> Transcripts:
    """Transcribe with the CTranslate2 engine (the runtime faster-whisper uses); `fallback` as in
    `transcribe`, with the criteria of openai/whisper's own implementation; `window_s` as in `transcribe`
    (CTranslate2's encoder takes any window up to 30 s)."""
    try:
        import ctranslate2
    except ImportError:
        raise UserError("--engine ctranslate2 needs `pip install ctranslate2`") from None
    try:
        engine = ctranslate2.models.Whisper(str(model_dir), device="cuda" if device.startswith("cuda") else "cpu",
                                            compute_type=compute_type)
    except ValueError as exc:  # e.g. an unknown or unsupported compute type
        raise UserError(f"ctranslate2 cannot load {model_dir} with compute type {compute_type!r}: {exc}") from None
    tok = processor.tokenizer
    hypotheses: list[str] = [""] * len(utterances)
    audio = [u.load() for u in utterances]
    extractor = _extractor(processor, audio, window_s)
    start = time.perf_counter()
    for batch in _batches(utterances, batch_size):
        features = extractor(
            [audio[i] for i in batch], sampling_rate=SAMPLE_RATE, return_tensors="np"
        ).input_features.astype(np.float32)
        language = utterances[batch[0]].language
        prompt = ["<|startoftranscript|>"]
        if engine.is_multilingual:
            prompt += [f"<|{language}|>" if language else None, "<|transcribe|>"]
        prompt.append("<|notimestamps|>")
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        if engine.is_multilingual and language is None:
            detected = engine.detect_language(storage)
            prompts = [[tok.convert_tokens_to_ids(t if t else d[0][0]) for t in prompt] for d in detected]
        else:
            prompts = [tok.convert_tokens_to_ids(prompt)] * len(batch)
        limit = token_limit([audio[i] for i in batch])
        results = engine.generate(storage, prompts, beam_size=beam_size, max_length=limit + len(prompts[0]),
                                  return_scores=fallback)
        texts = [tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip() for r in results]
        if fallback:
            ctranslate2.set_random_seed(seed + batch[0])
            _ct2_fallback(engine, tok, features, prompts, results, texts, limit)
        for i, text in zip(batch, texts):
            hypotheses[i] = text
        if progress:
            progress(len(batch))
    wall = time.perf_counter() - start
    return Transcripts(hypotheses, wall, sum(len(a) for a in audio) / SAMPLE_RATE)


def _ct2_fallback(engine, tok, features: np.ndarray, prompts: list, results: list, texts: list[str], limit: int) -> None:
    """Decode again, in place, the clips of a batch that loop or are unsure, sampling at each next
    temperature until they pass (openai/whisper's rule; the last try is kept)."""
    import ctranslate2

    def fails(result, text: str) -> bool:
        n = len(result.sequences_ids[0])
        # CTranslate2's score is the log-probability divided by the length; openai divides by length + 1.
        avg_logprob = result.scores[0] * n / (n + 1)
        return compression_ratio(text) > TEXT_COMPRESSION_THRESHOLD or avg_logprob < FALLBACK["logprob_threshold"]

    redo = [k for k, (r, t) in enumerate(zip(results, texts)) if fails(r, t)]
    for temperature in FALLBACK["temperature"][1:]:
        if not redo:
            return
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features[redo]))
        again = engine.generate(storage, [prompts[k] for k in redo], beam_size=1, sampling_temperature=temperature,
                                sampling_topk=0, max_length=limit + len(prompts[0]), return_scores=True)
        still = []
        for k, r in zip(redo, again):
            texts[k] = tok.decode(r.sequences_ids[0], skip_special_tokens=True).strip()
            if fails(r, texts[k]):
                still.append(k)
        redo = still


def compression_ratio(text: str) -> float:
    """Bytes of `text` over bytes of its zlib compression: ~1 for speech, large for a loop."""
    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 0.0
