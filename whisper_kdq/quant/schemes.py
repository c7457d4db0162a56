"""Quantization math, no file format and no modules: a float weight <-> (codes, scales, offsets, table).

Every scheme dequantizes the same way, `w = table[code] * scale + offset`, one scale (and offset)
per group of weights. Uniform and APoT differ only in their table and in how a group's scale is
chosen, so packing, the checkpoint and fake-quant training share one code path.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from functools import lru_cache

import torch

from whisper_kdq.errors import UserError
from whisper_kdq.quant.scales import stored_scales

__all__ = ["SCHEMES", "GRANULARITIES", "QuantSpec", "QTensor", "Quantizer", "UniformQuantizer", "ApotQuantizer",
           "apot_levels", "parse_spec", "quantizer_for", "quantize", "dequantize"]

SCHEMES = ("uniform", "apot")
GRANULARITIES = ("per-tensor", "per-channel", "group")
MIN_BITS, MAX_BITS = 1, 8  # 1 bit: uniform with an offset only (two levels per group)
CLIP_RATIOS = tuple(1.0 - 0.03 * i for i in range(17))  # 1.0 ... 0.52: clipping search grid (fraction of max)


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized. `symmetric=None` picks the scheme's default (uniform: True;
    APoT: False, i.e. the group mean is stored as an offset: the paper's weight normalisation).
    `full_range` (uniform symmetric only): use all 2**bits codes, -2**(b-1) … 2**(b-1)-1, with a signed
    scale that puts the group's largest magnitude on the extra level (llama.cpp's q4_0 grid): at 2 bits
    four levels instead of three, at no storage cost. `scale_bits`: how the file stores the scales, 16 (fp16) or
    8 (log codes, quant/scales.py)."""

    scheme: str = "uniform"
    bits: int = 8
    granularity: str = "per-channel"
    group_size: int | None = None
    symmetric: bool | None = None
    full_range: bool = False
    scale_bits: int = 16

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise UserError(f"unknown scheme {self.scheme!r}: use one of {', '.join(SCHEMES)}")
        if not isinstance(self.bits, int) or not MIN_BITS <= self.bits <= MAX_BITS:
            raise UserError(f"bits must be an integer from {MIN_BITS} to {MAX_BITS}, got {self.bits!r}")
        if self.granularity not in GRANULARITIES:
            raise UserError(f"unknown granularity {self.granularity!r}: use one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group":
            if not isinstance(self.group_size, int) or self.group_size < 2:
                raise UserError(f"group size must be an integer >= 2, got {self.group_size!r}")
        elif self.group_size is not None:
            object.__setattr__(self, "group_size", None)
        if self.symmetric is None:
            object.__setattr__(self, "symmetric", self.scheme == "uniform" and self.bits > 1)
        if self.full_range and not (self.scheme == "uniform" and self.symmetric):
            raise UserError("full_range applies to symmetric uniform quantization only")
        if self.bits == 1 and not (self.scheme == "uniform" and not self.symmetric):
            # A symmetric 1-bit grid has one usable level (restricted) or {-1, 0} (full range); APoT needs a sign
            # and a magnitude. Two levels per group, offset and offset + scale, is the 1-bit grid that works.
            raise UserError("1-bit quantization is uniform with an offset per group: use symmetric false "
                            "(short form uniform1g128a)")
        if self.scale_bits not in (8, 16) or isinstance(self.scale_bits, bool):
            raise UserError(f"scale bits must be 16 (fp16) or 8 (log codes), got {self.scale_bits!r}")

    @property
    def short(self) -> str:
        """Compact name, e.g. `uniform4g128s`, `apot3ca`, `uniform8ts` (t tensor, c channel; s/a symmetric or
        not; f symmetric full-range)."""
        gran = {"per-tensor": "t", "per-channel": "c"}.get(self.granularity, f"g{self.group_size}")
        short = f"{self.scheme}{self.bits}{gran}{'f' if self.full_range else 's' if self.symmetric else 'a'}"
        return short if self.scale_bits == 16 else f"{short}:s{self.scale_bits}"

    def as_dict(self) -> dict:
        # full_range always written, so that a rule's spec merged onto a full-range default resets it.
        # scale_bits only when not the default, so that files and plans without it read as before.
        return {"scheme": self.scheme, "bits": self.bits, "symmetric": self.symmetric,
                "granularity": self.granularity, "group_size": self.group_size, "full_range": self.full_range,
                **({"scale_bits": self.scale_bits} if self.scale_bits != 16 else {})}


_SHORT = re.compile(r"^(uniform|apot)([0-9]+)(t|c|g[0-9]+)?([saf])?$")


def parse_spec(text: str) -> QuantSpec:
    """Parse the short form (`uniform4g128`, `apot3c`, `uniform8t`, optional `s`/`a`/`f` suffix)."""
    m = _SHORT.match(text.strip().lower())
    if not m:
        raise UserError(f"bad quantization spec {text!r}: expected e.g. uniform4g128, apot3c, uniform8t "
                        "(scheme, bits, t=per-tensor / c=per-channel / gN=groups of N, optional s/a/f)")
    scheme, bits, gran, sym = m.groups()
    gran = gran or "c"
    granularity = {"t": "per-tensor", "c": "per-channel"}.get(gran, "group")
    group = int(gran[1:]) if granularity == "group" else None
    return QuantSpec(scheme, int(bits), granularity, group, None if sym is None else sym in "sf", sym == "f")


@dataclass
class QTensor:
    """A quantized tensor: one code per weight (row-major, unsigned, < 2**bits), one scale (and fp16
    offset) per group (fp16, or float32 values of the 8-bit log grid when `spec.scale_bits` is 8); `table` maps a code to its level (APoT only; uniform tables are implicit)."""

    codes: torch.Tensor  # uint8, shape == weight shape
    scales: torch.Tensor  # float16 (float32 with 8-bit scales), [groups]
    offsets: torch.Tensor | None  # float16, [groups], None when symmetric
    spec: QuantSpec
    shape: tuple[int, ...] = field(default=())
    rows: tuple[int, ...] | None = None  # the part of a row-split weight that holds these rows (quant/rows.py)

    @property
    def table(self) -> torch.Tensor:
        return quantizer_for(self.spec).table()


# ----------------------------------------------------------------------------------------------
# Grouping: a weight is viewed as [groups, group_len]; a ragged last group is padded with NaN.


def n_groups(shape: tuple[int, ...], spec: QuantSpec) -> int:
    rows = shape[0] if shape else 1
    cols = max(1, _numel(shape) // max(rows, 1))
    if spec.granularity == "per-tensor":
        return 1
    if spec.granularity == "per-channel":
        return rows
    return rows * -(-cols // spec.group_size)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def to_groups(w: torch.Tensor, spec: QuantSpec) -> torch.Tensor:
    rows = w.shape[0]
    x = w.detach().reshape(rows, -1).float() if w.dim() > 1 else w.detach().reshape(1, -1).float()
    if spec.granularity == "per-tensor":
        return x.reshape(1, -1)
    if spec.granularity == "per-channel":
        return x
    pad = (-x.shape[1]) % spec.group_size
    if pad:
        x = torch.nn.functional.pad(x, (0, pad), value=float("nan"))
    return x.reshape(-1, spec.group_size)


def from_groups(x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    rows = shape[0] if len(shape) > 1 else 1
    cols = _numel(shape) // rows
    return x.reshape(rows, -1)[:, :cols].reshape(shape)


# ----------------------------------------------------------------------------------------------
# Schemes


class Quantizer(ABC):
    """Maps float groups to codes and back. Subclasses define the table and the unclipped range."""

    def __init__(self, spec: QuantSpec) -> None:
        self.spec = spec

    @abstractmethod
    def table(self) -> torch.Tensor:
        """float32 [2**bits]: the level of each code, in units of the group's scale."""

    @abstractmethod
    def range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Unclipped (scale, offset) per group of `x` [G, L] (NaN entries are padding)."""

    def clip(self, x: torch.Tensor, ratio: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(scale, offset) with the range shrunk to `ratio` of the maximum, rounded to fp16 (as stored)."""
        scale, offset = self.range(x)
        return stored_scales(scale * ratio, 16), None if offset is None else offset.half().float()

    def encode(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        """Nearest code of each element of `x` [G, L] (long)."""
        y = x if offset is None else x - offset[:, None]
        y = y / scale[:, None]
        values, codes = (t.to(y.device) for t in _sorted_levels(self.spec))
        mid = (values[1:] + values[:-1]) / 2
        idx = torch.bucketize(torch.nan_to_num(y), mid)
        return codes[idx]

    def decode(self, codes: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
               table: torch.Tensor | None = None) -> torch.Tensor:
        table = (self.table() if table is None else table.float()).to(codes.device)
        y = table[codes.long()] * scale[:, None]
        return y if offset is None else y + offset[:, None]

    def error(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None,
              weight: torch.Tensor | None = None) -> torch.Tensor:
        """Squared error per group, optionally weighted per column (diagonal of the input Gram matrix)."""
        d = torch.nan_to_num(self.decode(self.encode(x, scale, offset), scale, offset) - x) ** 2
        return (d if weight is None else d * weight).sum(dim=1)


class UniformQuantizer(Quantizer):
    """Round-to-nearest on an integer grid. Symmetric: codes 1..2**bits-1 mean -q..q with
    q = 2**(bits-1)-1 (code 0 unused: a restricted range, as in CTranslate2 int8); full range: codes
    0..2**bits-1 mean -2**(b-1)..q, and the scale's sign orients the grid. Asymmetric: codes 0..2**bits-1,
    offset = the group's clipped minimum."""

    def table(self) -> torch.Tensor:
        return _uniform_table(self.spec.bits, self.spec.symmetric)

    def encode(self, x: torch.Tensor, scale: torch.Tensor, offset: torch.Tensor | None) -> torch.Tensor:
        # Nearest level by rounding, ties to even (much faster than the base class search; QAT rounds alike).
        bits = self.spec.bits
        y = torch.nan_to_num(x if offset is None else x - offset[:, None]) / scale[:, None]
        if self.spec.symmetric:
            q = 2 ** (bits - 1) - 1
            return torch.round(y).clamp(-q - int(self.spec.full_range), q).long() + 2 ** (bits - 1)
        return torch.round(y).clamp(0, 2 ** bits - 1).long()

    def range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        bits = self.spec.bits
        if self.spec.full_range:  # the largest magnitude lands on level -2**(b-1): scale = -that weight / 2**(b-1)
            filled = torch.nan_to_num(x, nan=0.0)
            top = filled.gather(1, filled.abs().argmax(dim=1, keepdim=True))[:, 0]
            return -top / 2 ** (bits - 1), None
        if self.spec.symmetric:
            amax = torch.nan_to_num(x.abs(), nan=0.0).amax(dim=1)
            return amax / (2 ** (bits - 1) - 1), None
        if bits == 1:
            return _two_means(x)
        hi = torch.nan_to_num(x, nan=float("-inf")).amax(dim=1)
        lo = torch.nan_to_num(x, nan=float("inf")).amin(dim=1)
        return (hi - lo) / (2 ** bits - 1), lo

    def clip(self, x: torch.Tensor, ratio: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.spec.symmetric:
            return super().clip(x, ratio)
        raw, lo = self.range(x)
        mid = lo + raw * (2 ** self.spec.bits - 1) / 2
        scale = stored_scales(raw * ratio, 16)
        # A constant group (scale 0, stored as 1) sits exactly on its offset, code 0.
        offset = torch.where(raw * ratio == 0, lo, mid - scale * (2 ** self.spec.bits - 1) / 2)
        return scale, offset.half().float()


def _two_means(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """1 bit: (scale, offset) with levels at the means of the group's halves, split at its mean (a step of
    Lloyd's algorithm; the full range would put both levels at the extremes, far from most weights)."""
    valid = ~torch.isnan(x)
    n = valid.sum(dim=1).clamp(min=1)
    filled = torch.nan_to_num(x, nan=0.0)
    mean = filled.sum(dim=1) / n
    upper = valid & (filled > mean[:, None])
    lower = valid & ~upper
    hi = (filled * upper).sum(dim=1) / upper.sum(dim=1).clamp(min=1)
    lo = (filled * lower).sum(dim=1) / lower.sum(dim=1).clamp(min=1)
    hi = torch.where(upper.any(dim=1), hi, lo)  # a constant group: one level, scale 0 (stored as 1)
    return hi - lo, lo


class ApotQuantizer(Quantizer):
    """Additive Powers-of-Two (Li et al., ICLR 2020): a sign bit plus an index into 2**(bits-1)
    magnitudes, each a sum of power-of-two terms, normalised so the top level is 1. The scale is
    the clipping value alpha (times the std of the normalisation); the offset is the mean."""

    def table(self) -> torch.Tensor:
        return _apot_table(self.spec.bits)

    def range(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        offset = None if self.spec.symmetric else torch.nan_to_num(x.nanmean(dim=1))
        y = x if offset is None else x - offset[:, None]
        return torch.nan_to_num(y.abs(), nan=0.0).amax(dim=1), offset


def quantizer_for(spec: QuantSpec) -> Quantizer:
    return (UniformQuantizer if spec.scheme == "uniform" else ApotQuantizer)(spec)


# ----------------------------------------------------------------------------------------------
# Level tables


# Power-of-two exponents of each additive term, per magnitude bit count B = bits - 1. B = 2..6 are
# the reference APoT code's tables; B = 1 (2-bit: ternary) and B = 7 (8-bit) are our extension, built
# the same way (every exponent distinct, so all 2**B sums are distinct).
_APOT_TERMS: dict[int, tuple[tuple[int, ...], ...]] = {
    1: ((0,),),
    2: ((1, 2, 3),),
    3: ((1, 2, 4), (3,)),
    4: ((1, 3, 5), (2, 4, 6)),
    5: ((1, 3, 6), (2, 4, 7), (5,)),
    6: ((1, 4, 7), (2, 5, 8), (3, 6, 9)),
    7: ((1, 4, 7), (2, 5, 8), (3, 6, 9), (10,)),
}


@lru_cache(maxsize=None)
def apot_levels(magnitude_bits: int) -> tuple[float, ...]:
    """The 2**B non-negative APoT magnitudes, ascending, top level 1."""
    sums = {0.0}
    for term in _APOT_TERMS[magnitude_bits]:
        sums = {s + t for s in sums for t in [0.0] + [2.0 ** -e for e in term]}
    levels = sorted(sums)
    assert len(levels) == 2 ** magnitude_bits
    return tuple(v / levels[-1] for v in levels)


@lru_cache(maxsize=None)
def _apot_table(bits: int) -> torch.Tensor:
    # code = sign << (bits-1) | index: low half positive, high half negative (its index 0 is -0).
    mags = torch.tensor(apot_levels(bits - 1), dtype=torch.float32)
    return torch.cat([mags, -mags])


@lru_cache(maxsize=None)
def _uniform_table(bits: int, symmetric: bool) -> torch.Tensor:
    codes = torch.arange(2 ** bits, dtype=torch.float32)
    return codes - 2 ** (bits - 1) if symmetric else codes


@lru_cache(maxsize=None)
def _sorted_levels(spec: QuantSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct usable levels ascending, and the code of each (restricted range: no -2**(b-1))."""
    table = quantizer_for(spec).table()
    usable = torch.arange(len(table))
    if spec.scheme == "uniform" and spec.symmetric and not spec.full_range:
        usable = usable[1:]
    values, first = {}, []
    for code in usable.tolist():
        values.setdefault(float(table[code]), code)
    ordered = sorted(values)
    first = [values[v] for v in ordered]
    return torch.tensor(ordered, dtype=torch.float32), torch.tensor(first, dtype=torch.long)


# ----------------------------------------------------------------------------------------------
# Whole tensors


def choose_params(w: torch.Tensor, spec: QuantSpec, clip: str = "mse",
                  column_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-group (scale, offset) for `w`: `clip="max"` keeps the full range; `"mse"` picks, per
    group, the clipping ratio with the smallest (optionally column-weighted) squared error."""
    q = quantizer_for(spec)
    x = to_groups(w, spec)
    if clip == "max":
        return q.clip(x, 1.0)
    if clip != "mse":
        raise UserError(f"unknown clipping method {clip!r}: use max or mse")
    weight = None
    if column_weight is not None:
        weight = to_groups(column_weight.expand(w.reshape(w.shape[0], -1).shape).contiguous(), spec)
    best_scale, best_offset = q.clip(x, 1.0)
    best_err = q.error(x, best_scale, best_offset, weight)
    for ratio in CLIP_RATIOS[1:]:
        scale, offset = q.clip(x, ratio)
        err = q.error(x, scale, offset, weight)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_scale = torch.where(better, scale, best_scale)
        if offset is not None:
            best_offset = torch.where(better, offset, best_offset)
    return best_scale, best_offset


def quantize(w: torch.Tensor, spec: QuantSpec, clip: str = "mse", scale: torch.Tensor | None = None,
             offset: torch.Tensor | None = None, column_weight: torch.Tensor | None = None) -> QTensor:
    """Quantize `w` with `spec`. Given `scale`/`offset` (e.g. learned in QAT) they are used as is."""
    if scale is None:
        scale, offset = choose_params(w, spec, clip, column_weight)
    else:
        offset = None if offset is None else offset.detach().float().reshape(-1).half().float()
    scale = stored_scales(scale.detach().float().reshape(-1), spec.scale_bits)
    x = to_groups(w, spec)
    codes = quantizer_for(spec).encode(x, scale, offset)
    codes = from_groups(codes, tuple(w.shape)).to(torch.uint8)
    return QTensor(codes, scale.half() if spec.scale_bits == 16 else scale, None if offset is None else offset.half(),
                   spec, tuple(w.shape))


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32, table: torch.Tensor | None = None) -> torch.Tensor:
    x = to_groups(q.codes.long(), q.spec) if q.spec.granularity != "group" else _group_codes(q)
    offset = None if q.offsets is None else q.offsets.float()
    w = quantizer_for(q.spec).decode(torch.nan_to_num(x).long(), q.scales.float(), offset, table)
    return from_groups(w, q.shape).to(dtype)


def _group_codes(q: QTensor) -> torch.Tensor:
    rows = q.shape[0] if len(q.shape) > 1 else 1
    x = q.codes.reshape(rows, -1).long()
    pad = (-x.shape[1]) % q.spec.group_size
    return torch.nn.functional.pad(x, (0, pad)).reshape(-1, q.spec.group_size)
