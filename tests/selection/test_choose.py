"""Layer selection rules: budgets, orders, baselines, and the exact monotone match."""

from __future__ import annotations

import itertools

import pytest
import torch

from whisper_kdq.errors import UserError
from whisper_kdq.quant.schemes import QuantSpec
from whisper_kdq.selection.choose import choose
from whisper_kdq.distill.matching import monotone_match
from whisper_kdq.selection.units import Unit

LOW, HIGH = QuantSpec("uniform", 3, "group", 128), QuantSpec("uniform", 4, "group", 128)


def _units() -> list[Unit]:
    units = [Unit("conv", "conv", None, "conv", params=100, quant_loss=0.5)]
    losses = [0.9, 0.1, 0.2, 0.8]
    units += [Unit(f"encoder.{i}", "encoder", i, f"enc{i}", params=1000, quant_loss=q, distill_loss=0.1)
              for i, q in enumerate(losses)]
    units.append(Unit("embedding", "embedding", None, "emb", params=4000, quant_loss=0.4))
    units += [Unit(f"decoder.{i}", "decoder", i, f"dec{i}", params=1000, quant_loss=0.3, distill_loss=d)
              for i, d in enumerate([0.01, 1.0])]
    return units


def _size(units):
    # Bytes as a simple function of the bits the units were given (what predict_packed does for real).
    return lambda plan: sum(u.params * (3 if any(r.source == u.name for r in plan.rules) else 4) for u in units) // 8


def test_guided_lowers_least_damaging_units_until_the_target():
    units = _units()
    full = _size(units)(type("P", (), {"rules": []})())
    sel = choose(units, "guided", high=HIGH, low=LOW, size_of=_size(units), target_bytes=full - 600)
    low = {u.name for u in units if u.bits == 3}
    assert sel.predicted_bytes <= full - 600
    # Damage per weight: the embedding (0.4 over 4000) goes first, then encoder.1 (0.1 over 1000).
    assert low == {"embedding", "encoder.1"}
    # Equal quantization losses: the decoder block far from its teacher keeps its bits.
    assert not ("decoder.1" in low and "decoder.0" not in low)
    # The blocks that quantization hurts most are the ones distilled.
    assert {u.name for u in units if u.distill and u.component == "encoder"} == {"encoder.0", "encoder.3"}


def test_baselines():
    units = _units()
    assert all(u.bits == 3 for u in choose(units, "all", high=HIGH, low=LOW, size_of=_size(units)).units)
    sel = choose(units, "first-last", high=HIGH, low=LOW, size_of=_size(units), low_fraction=1.0)
    kept = {u.name for u in sel.units if u.bits == 4}
    assert {"encoder.0", "encoder.3", "decoder.0", "decoder.1", "conv"} <= kept
    a = [u.bits for u in choose(_units(), "random", high=HIGH, low=LOW, size_of=_size(units), low_fraction=0.5, seed=3).units]
    b = [u.bits for u in choose(_units(), "random", high=HIGH, low=LOW, size_of=_size(units), low_fraction=0.5, seed=3).units]
    assert a == b and a.count(3) == 4


def test_unreachable_target_and_unknown_strategy_are_user_errors():
    units = _units()
    with pytest.raises(UserError, match="out of reach"):
        choose(units, "guided", high=HIGH, low=LOW, size_of=_size(units), target_bytes=10)
    with pytest.raises(UserError, match="unknown selection strategy"):
        choose(units, "best", high=HIGH, low=LOW, size_of=_size(units))


def test_monotone_match_is_the_exact_optimum():
    gen = torch.Generator().manual_seed(0)
    for n_s, n_t in [(2, 6), (3, 4), (4, 4), (3, 7)]:
        for _ in range(5):
            cost = torch.rand(n_s, n_t, generator=gen)
            best = min((sum(cost[i, j] for i, j in enumerate(m)), m)
                       for m in itertools.combinations_with_replacement(range(n_t), n_s))
            path = monotone_match(cost)
            assert all(a <= b for a, b in zip(path, path[1:]))
            assert abs(sum(cost[i, j] for i, j in enumerate(path)) - best[0]) < 1e-6


def test_per_matrix_units_are_distilled_and_kept_per_block():
    # Two matrices per block: distillation marks whole blocks, ranked by the sum of their matrices' losses.
    units = [Unit(f"encoder.{i}.{m}", "encoder", i, f"enc{i}{m}", params=500, quant_loss=q, distill_loss=0.1)
             for i, pair in enumerate([(0.1, 0.1), (0.05, 0.3), (0.01, 0.02), (0.2, 0.0)]) for m, q in zip("ab", pair)]
    sel = choose(units, "guided", high=HIGH, low=LOW, size_of=_size(units), low_fraction=0.5)
    assert sel.as_dict()["distill_layers"]["encoder"] == [0, 1]  # sums 0.2, 0.35, 0.03, 0.2: ties keep order
    assert {u.name for u in units if u.distill} == {"encoder.0.a", "encoder.0.b", "encoder.1.a", "encoder.1.b"}
    # The lowest damage per weight goes low first, matrix by matrix, not block by block.
    assert {u.name for u in units if u.bits == 3} == {"encoder.3.b", "encoder.2.a", "encoder.2.b", "encoder.1.a"}
    kept = {u.name for u in choose(units, "first-last", high=HIGH, low=LOW, size_of=_size(units), low_fraction=1.0).units
            if u.bits == 4}
    assert kept == {"encoder.0.a", "encoder.0.b", "encoder.3.a", "encoder.3.b"}
