"""Reading audio: decode with soundfile, mix to mono, resample to 16 kHz with soxr."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from whisper_kdq.errors import UserError

SAMPLE_RATE = 16_000  # Whisper's input rate
MAX_SECONDS = 30.0  # one Whisper window; longer clips are rejected (we do not split them)


class AudioError(UserError):
    """A clip that cannot be used: missing, unreadable, empty or too long."""


def load_audio(path: str | Path, max_seconds: float = MAX_SECONDS) -> np.ndarray:
    """Return the clip at `path` as float32 mono samples at 16 kHz.

    Any sample rate is accepted and resampled (soxr, high quality). Raises `AudioError` with a
    one-line reason for a missing, corrupt, empty or over-long file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"audio file not found: {path}")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
        raise AudioError(f"cannot decode audio {path}: {str(exc).splitlines()[0]}") from None
    if data.size == 0:
        raise AudioError(f"audio file is empty: {path}")
    mono = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if rate != SAMPLE_RATE:
        mono = soxr.resample(mono, rate, SAMPLE_RATE, quality="HQ").astype(np.float32)
    seconds = len(mono) / SAMPLE_RATE
    if seconds > max_seconds:
        raise AudioError(
            f"audio is {seconds:.1f} s long, over the {max_seconds:.0f} s Whisper window "
            f"(split it first; clips are not split automatically): {path}"
        )
    if not np.isfinite(mono).all():
        raise AudioError(f"audio contains NaN or infinite samples: {path}")
    return np.ascontiguousarray(mono, dtype=np.float32)


def write_flac(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> None:
    """Write 16-bit FLAC atomically (temporary name, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), samples, rate, format="FLAC", subtype="PCM_16")
    tmp.replace(path)
