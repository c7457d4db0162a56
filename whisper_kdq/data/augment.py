"""Speed perturbation: more voices from the same clips.

A clip played `factor` times faster (resampled, as Kaldi's speed perturbation does) is shorter and
higher: its pitch and formants move by `factor`, about the difference between two speakers' vocal
tracts at ±10 %. Training on such copies is what a small corpus of few voices needs to generalise
to a voice it has not heard (the corpus's test voices are held out: docs/BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np
import soundfile as sf
import soxr

from whisper_kdq.data.audio import SAMPLE_RATE
from whisper_kdq.data.manifest import Dataset, Utterance
from whisper_kdq.errors import UserError


def speed_perturb(samples: np.ndarray, factor: float) -> np.ndarray:
    """`samples` (16 kHz) played `factor` times faster: len / factor samples, pitch × factor."""
    if factor == 1.0:
        return samples
    out = soxr.resample(samples, SAMPLE_RATE, SAMPLE_RATE / factor, quality="HQ")
    return np.ascontiguousarray(out, dtype=np.float32)


def parse_factors(text: str) -> list[float]:
    """'0.9,1.1' → [0.9, 1.1]; each factor in [0.5, 2] and not 1 (the clip itself is kept anyway)."""
    try:
        factors = [float(f) for f in text.split(",") if f.strip()]
    except ValueError:
        raise UserError(f"--speed-perturb {text!r}: give factors such as 0.9,1.1") from None
    bad = [f for f in factors if not 0.5 <= f <= 2.0 or f == 1.0]
    if not factors or bad:
        raise UserError(f"--speed-perturb {text!r}: factors lie in [0.5, 2] and differ from 1")
    return sorted(set(factors))


def copy_id(uid: str, factor: float) -> str:
    return f"{uid}~speed{factor:g}"


def with_speed_copies(dataset: Dataset, factors: Sequence[float], max_seconds: float = 30.0) -> Dataset:
    """`dataset` plus one copy of every clip per factor, loaded and perturbed when used. A copy longer
    than `max_seconds` (the training window) is left out: cutting it would cut its transcript."""
    copies = []
    for u in dataset.utterances:
        seconds = _seconds(u)
        copies += [replace(u, id=copy_id(u.id, f), speed=u.speed * f, source=f"{u.source} (speed {f:g})")
                   for f in factors if seconds / f <= max_seconds]
    return Dataset(dataset.utterances + copies, list(dataset.skipped))


def _seconds(u: Utterance) -> float:
    if u.samples is not None:
        return len(u.samples) / SAMPLE_RATE
    info = sf.info(str(u.audio))
    return info.frames / info.samplerate
