"""Tensors a formula gives: a packed checkpoint names the formula instead of storing the values.

Whisper's encoder position table is not learned. openai/whisper builds it as `sinusoids(n_audio_ctx,
n_audio_state)` and transformers initializes it the same way and never trains it. In whisper-base it
is 1 500 x 512 values: 0.78 MB even at 8 bits, 2.8 % of a file 10.5x smaller than the fp32 model. A
packed file whose table equals the formula (within float16 rounding, as the hub's and CTranslate2's
files hold it) records `{"model.encoder.embed_positions.weight": "sinusoids"}` under `generated` and
rebuilds the table on load (docs/FORMAT.md, "Generated tensors"). A trained or altered table is
stored as before.
"""

from __future__ import annotations

import math

import torch

__all__ = ["SINUSOIDS", "ENCODER_POSITIONS", "sinusoids", "generated_tensors", "generate"]

SINUSOIDS = "sinusoids"
ENCODER_POSITIONS = "model.encoder.embed_positions.weight"
# float16 keeps 11 significant bits: values in [-1, 1] round by at most 2**-11 (4.9e-4).
TOLERANCE = 1e-3


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> torch.Tensor:
    """Whisper's encoder position table: sines then cosines of geometrically spaced frequencies."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2, dtype=torch.float32))
    scaled = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


def generated_tensors(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """{name: formula} for the tensors of `state` that a formula reproduces."""
    t = state.get(ENCODER_POSITIONS)
    if t is None or t.dim() != 2 or t.shape[1] < 4 or t.shape[1] % 2:
        return {}
    diff = (t.detach().float().cpu() - sinusoids(*t.shape)).abs().max()
    return {ENCODER_POSITIONS: SINUSOIDS} if float(diff) <= TOLERANCE else {}


def generate(formula: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The tensor `formula` gives at `shape` (ValueError for a formula this version does not know)."""
    if formula != SINUSOIDS or len(shape) != 2:
        raise ValueError(f"unknown generated tensor {formula!r} of shape {tuple(shape)}")
    return sinusoids(*shape)
