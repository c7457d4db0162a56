"""A packed checkpoint written again on its own grid: same codes' levels, other storage (8-bit scales, fp16 floats).

`quantize --method keep` (the plan must quantize every tensor as the file does, storage aside): the file's
dequantized weights are re-quantized under its own scales, rounded as the plan stores them, so the weights move
only by what the new storage costs (an 8-bit scale is within 2.8 % of its fp16 value) instead of taking a new grid
from the clip search, which would undo quantization-aware training.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import torch

from whisper_kdq.errors import UserError
from whisper_kdq.quant.plan import Plan

__all__ = ["kept_grid"]


def kept_grid(path: Path, plan: Plan, state: dict[str, torch.Tensor]) -> dict[str, tuple]:
    """`{part name: (scales, offsets)}` of packed file `path`, as `save_packed(qparams=...)` takes them; a
    UserError when `plan` quantizes any tensor otherwise than the file (bits, groups, rows), storage aside."""
    from whisper_kdq.quant.reader import packed_codes
    from whisper_kdq.quant.rows import ROWS_SUFFIX

    codes = packed_codes(path)
    specs, splits = plan.resolve(state), plan.splits(state)
    for name, spec in specs.items():
        if spec is None or name not in codes and "embed_positions" in name:
            continue  # a generated table, or one the plan newly keeps float
        q = codes.get(name)
        if q is None:
            raise UserError(f"--method keep: {name} is float in {path}; the plan quantizes it ({spec.short})")
        split = splits.get(name)
        wanted = [(name, spec)] + ([] if split is None else [(name + ROWS_SUFFIX, split.spec)])
        for part, pspec in wanted:
            have = codes.get(part)
            if have is None or replace(have.spec, scale_bits=16) != replace(pspec, scale_bits=16) or (
                    split is not None and part.endswith(ROWS_SUFFIX) and have.rows != split.rows):
                what = "absent" if have is None else have.spec.short
                raise UserError(f"--method keep: {part} is {what} in {path}; the plan says {pspec.short} "
                                "(keep re-stores a file's grid: the plan may change only scale_bits and floats)")
    return {n: (q.scales.float(), None if q.offsets is None else q.offsets.float()) for n, q in codes.items()}
