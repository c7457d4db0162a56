"""How a quantized tensor's per-group scales are stored: fp16 (2 bytes each), or 8-bit log codes (~1 byte each).

At 2-4 bits per weight and groups of 128, fp16 scales are 1/8 of a bit per weight: 1.1 MB of a 27.6 MB whisper-base
file 10.5x smaller than fp32. `scale_bits: 8` stores each scale as a sign bit and a 7-bit position on a log2 grid
spanning its block of 64 scales (QLoRA's "double quantization", on a log grid because a block's scales span up to
10 octaves): code = sign << 7 | k, |scale| = 2 ** (lo + k * step), one fp16 (lo, step) pair per block. The
relative error is at most step / 2 octaves (2.8 % on whisper-base's scales, 0.25 % on average), and it is paid in
training too: the fake-quantized forward uses exactly the values the file decodes (`stored_scales`).
docs/FORMAT.md, "8-bit scales", specifies the layout.
"""

from __future__ import annotations

import torch

__all__ = ["SCALE_BLOCK", "stored_scales", "encode_scales", "decode_scales"]

SCALE_BLOCK = 64  # scales per (lo, step) pair: 4 bytes per 64 scales, 1.0625 bytes a scale in all
_LEVELS = 127  # k = 0 … 127: 7 bits beside the sign


def _nonzero(s: torch.Tensor) -> torch.Tensor:
    # A scale that is (or underflows to) 0, an all-zero group's, becomes 1, which still encodes that group's zeros
    # exactly instead of dividing by zero. Full-range scales are signed.
    return torch.where(s != 0, s, torch.ones_like(s))


def _blocks(x: torch.Tensor, fill: float) -> torch.Tensor:
    pad = (-x.numel()) % SCALE_BLOCK
    return torch.cat([x.reshape(-1), x.new_full((pad,), fill)]).reshape(-1, SCALE_BLOCK)


def encode_scales(scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat scales -> (uint8 codes [G], float16 ranges [ceil(G / 64), 2] of (lo, step) per block)."""
    s = _nonzero(scale.detach().float().reshape(-1))
    log = s.abs().log2()
    lo = _blocks(log, float("inf")).amin(dim=1).half()
    hi = _blocks(log, float("-inf")).amax(dim=1)
    step = ((hi - lo.float()) / _LEVELS).clamp(min=0).half()
    lo_e = lo.float().repeat_interleave(SCALE_BLOCK)[: s.numel()]
    step_e = step.float().repeat_interleave(SCALE_BLOCK)[: s.numel()]
    flat = step_e == 0  # a block of equal scales: every k is 0
    k = torch.where(flat, 0.0, (log - lo_e) / torch.where(flat, 1.0, step_e))
    k = torch.round(k).clamp(0, _LEVELS).to(torch.uint8)
    codes = k | ((s < 0).to(torch.uint8) << 7)
    return codes, torch.stack([lo, step], dim=1)


def decode_scales(codes: torch.Tensor, ranges: torch.Tensor) -> torch.Tensor:
    """Inverse of `encode_scales`: float32 scales [G]."""
    c = codes.reshape(-1).long()
    lo = ranges[:, 0].float().repeat_interleave(SCALE_BLOCK)[: c.numel()]
    step = ranges[:, 1].float().repeat_interleave(SCALE_BLOCK)[: c.numel()]
    magnitude = torch.exp2(lo + (c & _LEVELS).float() * step)
    return torch.where(c >= 128, -magnitude, magnitude)


def stored_scales(scale: torch.Tensor, bits: int = 16) -> torch.Tensor:
    """The float32 values a file stores for `scale` at `bits` (16: fp16; 8: the log codes above), same shape."""
    if bits == 16:
        return _nonzero(scale.float().half().float())
    return decode_scales(*encode_scales(scale)).reshape(scale.shape).to(scale.device)
