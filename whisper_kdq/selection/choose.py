"""Choosing bits and distillation targets per unit, from the measured losses or by a baseline rule.

Guided (our reconstruction of the paper's mutual guidance, see docs/SELECTION.md):
- layers to quantize at low bits come from the distillation losses: a block that already sits close
  to its teacher block is cheap to push to low bits (distillation will hold it there); a block far
  from its teacher keeps the higher bits. Lowering is greedy by expected damage per byte saved:
  quant_loss × (1 + distill_loss / mean distill_loss) / params.
- layers to distil come from the quantization losses: the blocks whose quantization moves the
  output most get the hidden-state distillation signal.
Baselines at the same budget: `random` (seeded order), `first-last` (never lowers the first and last
block of each stack or the conv front-end), `all` (every unit at low bits, every block distilled).
"""

from __future__ import annotations

import random as _random
from dataclasses import dataclass
from typing import Callable

from whisper_kdq.errors import UserError
from whisper_kdq.quant.plan import Plan, Rule
from whisper_kdq.quant.schemes import QuantSpec
from whisper_kdq.selection.units import Unit

STRATEGIES = ("guided", "random", "first-last", "all")


@dataclass
class Selection:
    strategy: str
    units: list[Unit]
    plan: Plan
    predicted_bytes: int
    target_bytes: int | None

    def as_dict(self) -> dict:
        return {"strategy": self.strategy, "predicted_bytes": self.predicted_bytes, "target_bytes": self.target_bytes,
                "units": [u.as_dict() for u in self.units],
                "distill_layers": {stack: sorted({u.index for u in self.units if u.component == stack and u.distill})
                                   for stack in ("encoder", "decoder")}}


def build_plan(units: list[Unit], high: QuantSpec | None, low: QuantSpec, clip: str = "mse",
               row_rules: list | None = None) -> Plan:
    """High spec by default (None = float), one rule per unit chosen for low bits; `row_rules` as given."""
    rules = []
    for u in units:
        if u.bits == low.bits:
            rules.append(Rule(u.pattern, low.as_dict(), False, u.name))
        elif high is None:
            rules.append(Rule(u.pattern, {}, True, u.name))
    return Plan(high, rules, clip, row_rules=list(row_rules or []))


def _order(units: list[Unit], strategy: str, seed: int) -> list[Unit]:
    """Units in the order they are lowered to low bits."""
    if strategy == "random":
        order = list(units)
        _random.Random(seed).shuffle(order)
        return order
    if strategy == "first-last":
        ends = set()
        for stack in ("encoder", "decoder"):
            indices = [u.index for u in units if u.component == stack]
            if indices:
                ends |= {(stack, min(indices)), (stack, max(indices))}
        return [u for u in units if (u.component, u.index) not in ends and u.component != "conv"]
    if strategy == "guided":
        missing = [u.name for u in units if u.quant_loss != u.quant_loss]
        if missing:
            raise UserError(f"guided selection needs measured quantization losses (missing for {missing[0]})")
        dl = [u.distill_loss for u in units if u.distill_loss == u.distill_loss]
        mean_dl = sum(dl) / len(dl) if dl and sum(dl) > 0 else None

        def damage(u: Unit) -> float:
            weight = 1.0 + (u.distill_loss / mean_dl if mean_dl and u.distill_loss == u.distill_loss else 0.0)
            return max(u.quant_loss, 0.0) * weight / max(u.params, 1)

        return sorted(units, key=damage)
    return list(units)


def choose(units: list[Unit], strategy: str, *, high: QuantSpec | None, low: QuantSpec,
           size_of: Callable[[Plan], int], target_bytes: int | None = None, low_fraction: float | None = None,
           distill_fraction: float = 0.5, seed: int = 0, clip: str = "mse", row_rules: list | None = None) -> Selection:
    """Assign `low` bits to units in the strategy's order until the predicted size meets
    `target_bytes` (or `low_fraction` of the units are low); mark the blocks to distil."""
    if strategy not in STRATEGIES:
        raise UserError(f"unknown selection strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    high_bits = None if high is None else high.bits
    for u in units:
        u.bits, u.distill = high_bits, False
    candidates = [u for u in units if u.params > 0]
    if strategy == "all":
        for u in candidates:
            u.bits = low.bits
    else:
        order = _order(candidates, strategy, seed)
        limit = len(order) if low_fraction is None else round(low_fraction * len(candidates))
        for u in order[:limit]:
            if target_bytes is not None and size_of(build_plan(units, high, low, clip, row_rules)) <= target_bytes:
                break
            u.bits = low.bits
    plan = build_plan(units, high, low, clip, row_rules)
    size = size_of(plan)
    if target_bytes is not None and size > target_bytes:
        raise UserError(f"target of {target_bytes / 1e6:.2f} MB is out of reach with {strategy} selection at "
                        f"{low.bits} bits (smallest: {size / 1e6:.2f} MB); lower --low-bits or the target")
    _mark_distilled(units, strategy, distill_fraction, seed)
    return Selection(strategy, units, plan, size, target_bytes)


def _mark_distilled(units: list[Unit], strategy: str, fraction: float, seed: int) -> None:
    """Hidden-state distillation is per block: with per-matrix units, a block's units are marked together
    and its quantization loss is the sum of theirs (small perturbations add up to first order)."""
    for stack in ("encoder", "decoder"):
        loss: dict[int, float] = {}
        for u in units:
            if u.component == stack:
                loss[u.index] = loss.get(u.index, 0.0) + u.quant_loss
        blocks = list(loss)
        n = max(1, round(fraction * len(blocks))) if blocks else 0
        if strategy in ("all", "first-last"):
            chosen = set(blocks)
        elif strategy == "random":
            chosen = set(_random.Random(seed + 1).sample(blocks, n))
        else:  # guided: the blocks whose quantization hurts most learn from the teacher
            chosen = set(sorted(blocks, key=lambda i: -loss[i])[:n])
        for u in units:
            if u.component == stack and u.index in chosen:
                u.distill = True
