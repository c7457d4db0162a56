"""Uniform and APoT math: codes in range, dequantization = table[code] * scale + offset, error bounds."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from whisper_kdq.errors import UserError
from whisper_kdq.quant.schemes import QuantSpec, apot_levels, dequantize, parse_spec, quantize, quantizer_for

SPECS = [f"{s}{b}{g}" for s in ("uniform", "apot") for b in range(2, 9) for g in ("t", "c", "g32")]


@settings(max_examples=40, deadline=None)
@given(spec=st.sampled_from(SPECS + ["uniform4g32a", "uniform3ca", "apot4cs", "uniform2g32f", "uniform3cf", "uniform8tf"]), rows=st.integers(1, 6),
       cols=st.integers(1, 70), seed=st.integers(0, 1000))
def test_quantize_is_deterministic_and_decodes_from_the_table(spec, rows, cols, seed):
    spec = parse_spec(spec)
    w = torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed))
    q = quantize(w, spec)
    assert q.codes.shape == w.shape and int(q.codes.max()) < 2 ** spec.bits
    assert q.scales.dtype == torch.float16 and (q.offsets is None) == spec.symmetric
    d = dequantize(q)
    # Re-quantizing the dequantized weight with the same scales reproduces the codes (a fixed point).
    again = quantize(d, spec, scale=q.scales, offset=q.offsets)
    assert torch.equal(dequantize(again), d)
    # Every value is one of the table's levels times its group's scale (plus offset).
    assert torch.isfinite(d).all()


@pytest.mark.parametrize("bits", range(2, 9))
def test_uniform_error_shrinks_with_bits(bits):
    w = torch.randn(32, 256, generator=torch.Generator().manual_seed(0))
    err = {b: ((dequantize(quantize(w, QuantSpec("uniform", b, "group", 64))) - w) ** 2).mean().item()
           for b in (bits, min(bits + 1, 8))}
    assert err[min(bits + 1, 8)] <= err[bits]
    # Round to nearest: per element the error is at most half a step of its group.
    q = quantize(w, QuantSpec("uniform", bits, "per-channel"), clip="max")
    step = q.scales.float()[:, None]
    assert ((dequantize(q) - w).abs() <= step / 2 + 1e-3 * step).all()


def test_apot_levels_match_the_reference_code():
    assert apot_levels(2) == (0.0, 0.25, 0.5, 1.0)
    assert [round(v, 6) for v in apot_levels(3)] == [0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.8, 1.0]
    for b in range(1, 8):
        assert len(set(apot_levels(b))) == 2 ** b and max(apot_levels(b)) == 1.0
    table = quantizer_for(QuantSpec("apot", 4)).table()
    assert table.numel() == 16 and table[8] == 0 and table[15] == -1.0  # sign bit is the top bit


def test_symmetric_int8_matches_ctranslate2_rule():
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(1))
    q = quantize(w, QuantSpec("uniform", 8, "per-channel"), clip="max")
    codes = q.codes.long() - 128
    ct2 = torch.round(w * (127 / w.abs().amax(dim=1, keepdim=True)))
    assert (codes - ct2).abs().max() <= 1 and codes.abs().max() == 127


@pytest.mark.parametrize("bad, match", [
    (dict(bits=9), "bits must be"), (dict(bits=0), "bits must be"), (dict(scheme="pot"), "unknown scheme"),
    (dict(granularity="group", group_size=1), "group size"), (dict(granularity="row"), "unknown granularity")])
def test_bad_specs_are_user_errors(bad, match):
    with pytest.raises(UserError, match=match):
        QuantSpec(**bad)


def test_parse_spec_round_trips_short_names():
    for text in SPECS:
        spec = parse_spec(text)
        assert parse_spec(spec.short) == spec
    with pytest.raises(UserError, match="bad quantization spec"):
        parse_spec("int4")


@pytest.mark.parametrize("bits", [2, 3, 4])
def test_full_range_uses_every_code_and_beats_the_restricted_grid_at_no_cost(bits):
    w = torch.randn(64, 256, generator=torch.Generator().manual_seed(2))
    full, restricted = QuantSpec("uniform", bits, "group", 128, full_range=True), QuantSpec("uniform", bits, "group", 128)
    qf, qr = quantize(w, full), quantize(w, restricted)
    assert set(qf.codes.unique().tolist()) == set(range(2 ** bits)) and 0 not in qr.codes.unique().tolist()
    assert (qf.scales < 0).any() and (qf.scales > 0).any()  # the sign orients each group's grid
    assert qf.scales.numel() == qr.scales.numel() and qf.offsets is None
    err = {k: ((dequantize(q) - w) ** 2).mean().item() for k, q in (("full", qf), ("restricted", qr))}
    assert err["full"] < 0.9 * err["restricted"], err
    # Without clipping, each group's largest magnitude sits on the extra level -2**(b-1) exactly.
    q = quantize(w, full, clip="max")
    groups = w.reshape(-1, 128)
    top = groups.gather(1, groups.abs().argmax(1, keepdim=True))[:, 0]
    assert torch.allclose(-(2 ** (bits - 1)) * q.scales.float(), top, rtol=1e-3)


def test_full_range_is_for_symmetric_uniform_only():
    assert parse_spec("uniform2g128f") == QuantSpec("uniform", 2, "group", 128, True, True)
    assert parse_spec("uniform2g128f").short == "uniform2g128f"
    for bad in (dict(scheme="apot"), dict(symmetric=False)):
        with pytest.raises(UserError, match="full_range applies to symmetric uniform"):
            QuantSpec(**{"bits": 3, "full_range": True, **bad})


@pytest.mark.parametrize("scheme", ["uniform", "apot"])
def test_codes_and_values_stay_on_the_device_of_the_weights(scheme):
    """Packing a model trained on a GPU: the level tables (built on the CPU) follow the weights' device.
    The `meta` device stands in for CUDA here: mixing it with CPU tensors fails the same way."""
    q = quantizer_for(QuantSpec(scheme=scheme, bits=4, granularity="group", group_size=8))
    x, scale = torch.randn(4, 8, device="meta"), torch.ones(4, device="meta")
    codes = q.encode(x, scale, None)
    assert codes.device.type == "meta" and q.decode(codes, scale, None).device.type == "meta"
