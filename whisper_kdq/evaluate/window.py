"""A shorter audio window: the encoder reads S seconds instead of Whisper's 30.

Whisper pads every clip to a 30-s window, so the encoder costs the same for a 3-s command as for 30 s of
speech. Its positions are a learned table read from the start, so a model can read a shorter window by
using the first S × 50 positions only (what whisper.cpp's `--audio-ctx` does): the encoder's cost drops
faster than linearly (attention is quadratic in the frames), and so does the decoder's cross-attention.
Whisper was never trained on such windows; on clips of a few seconds it reads them as well (measured in
docs/BENCHMARKS.md), but measure on your own data. A clip longer than the window is refused, not cut.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from typing import Iterator, Sequence

import numpy as np
from torch import nn

from whisper_kdq.data.audio import SAMPLE_RATE
from whisper_kdq.errors import UserError

FULL_WINDOW_S = 30.0
POSITIONS_PER_SECOND = 50  # one encoder position per 20 ms: two 10-ms mel frames


def window_positions(seconds: float, clips: Sequence[np.ndarray] = ()) -> int:
    """Encoder positions of an S-second window; refuses a window outside (0, 30] or shorter than a clip."""
    if not 0 < seconds <= FULL_WINDOW_S:
        raise UserError(f"--window {seconds:g}: the audio window must be between 0 and {FULL_WINDOW_S:g} seconds")
    positions = max(1, round(seconds * POSITIONS_PER_SECOND))
    longest = max((len(c) for c in clips), default=0) / SAMPLE_RATE
    if longest > positions / POSITIONS_PER_SECOND:  # the window as padded, in whole 20-ms positions
        raise UserError(f"--window {seconds:g}: the longest clip is {longest:.1f} s; use a window at least that long")
    return positions


def window_or_none(seconds: float | None) -> float | None:
    """The window as runs record it: None for Whisper's own 30 s (asked for or not), else the seconds."""
    return None if seconds is None or seconds == FULL_WINDOW_S else float(seconds)


def window_name(seconds: float | None) -> str:
    """How messages name a window (None: Whisper's own)."""
    return "Whisper's 30-s window" if seconds is None else f"a {seconds:g}-s window"


def windowed_extractor(extractor, seconds: float, clips: Sequence[np.ndarray] = ()):
    """A copy of a `WhisperFeatureExtractor` that pads to an S-second window (whole encoder positions),
    after checking that every clip fits it."""
    positions = window_positions(seconds, clips)
    out = copy.deepcopy(extractor)
    out.nb_max_frames = 2 * positions
    out.n_samples = out.nb_max_frames * out.hop_length
    out.chunk_length = seconds
    return out


@contextmanager
def audio_window(model, seconds: float) -> Iterator[None]:
    """Within the block, a transformers Whisper model reads S-second windows: its encoder keeps its
    first S × 50 positions. The model is restored on exit (its weights are not copied)."""
    positions = window_positions(seconds)
    encoder = model.get_encoder()
    table = encoder.embed_positions
    if positions > table.num_embeddings:
        raise UserError(f"--window {seconds:g}: this model's encoder has {table.num_embeddings} positions "
                        f"({table.num_embeddings / POSITIONS_PER_SECOND:g} s)")
    configs = list({id(c): c for c in (model.config, encoder.config)}.values())
    saved = (table, [c.max_source_positions for c in configs], getattr(encoder, "max_source_positions", None))
    # The encoder adds its whole position table to the frames, and checks the input length against
    # max_source_positions (so does generate, to tell a short-form input from a long one).
    encoder.embed_positions = nn.Embedding.from_pretrained(table.weight[:positions], freeze=True)
    for c in configs:
        c.max_source_positions = positions
    encoder.max_source_positions = positions
    try:
        yield
    finally:
        encoder.embed_positions = saved[0]
        for c, n in zip(configs, saved[1]):
            c.max_source_positions = n
        encoder.max_source_positions = saved[2]


# A model trained on S-second windows (`distill --window S`) records S in its generation config, which packed
# checkpoints and transformers directories both keep: `evaluate` reports it and says so when it decodes
# another window (such a model can read 30 s far worse than its window: docs/BENCHMARKS.md).
TRAINED_WINDOW_KEY = "whisper_kdq_trained_window_s"


def record_trained_window(model, seconds: float | None) -> None:
    """Note on `model` (a WhisperForConditionalGeneration) the window it was trained on; None: Whisper's own."""
    if seconds is None:
        if hasattr(model.generation_config, TRAINED_WINDOW_KEY):
            delattr(model.generation_config, TRAINED_WINDOW_KEY)
        return
    setattr(model.generation_config, TRAINED_WINDOW_KEY, float(seconds))


def trained_window(model) -> float | None:
    """The window `model` was trained on, as recorded; None where nothing is (Whisper's 30 s)."""
    value = getattr(getattr(model, "generation_config", None), TRAINED_WINDOW_KEY, None)
    return None if value is None else float(value)
