"""GPTQ: error-correcting rounding on the clip search's grid."""

from __future__ import annotations

import pytest
import torch

from whisper_kdq.quant.gptq import gptq_quantize, output_error
from whisper_kdq.quant.schemes import QuantSpec, choose_params, dequantize, quantize

SPECS = [QuantSpec("uniform", 3, "group", 32), QuantSpec("uniform", 4, "per-channel"),
         QuantSpec("uniform", 3, "group", 48, symmetric=False), QuantSpec("apot", 3, "group", 32),
         QuantSpec("uniform", 2, "per-tensor"), QuantSpec("uniform", 2, "group", 32, full_range=True)]


def correlated_inputs(n: int = 2000, cols: int = 96, seed: int = 0) -> torch.Tensor:
    """Inputs whose columns share a few strong directions and have uneven energy, as activations do;
    `seed` draws other samples of the same distribution."""
    mix = torch.randn(12, cols, generator=torch.Generator().manual_seed(100))
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 12, generator=g)
    return z @ mix + 0.3 * torch.randn(n, cols, generator=g) * torch.linspace(0.2, 3.0, cols)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.short)
def test_gptq_lowers_the_output_error_on_held_out_inputs(spec):
    w = torch.randn(64, 96, generator=torch.Generator().manual_seed(1)) * 0.05
    h_cal = (lambda x: x.T @ x / len(x))(correlated_inputs(seed=0))
    h_new = (lambda x: x.T @ x / len(x))(correlated_inputs(seed=2))  # other samples
    rtn = dequantize(quantize(w, spec, column_weight=torch.diag(h_cal)))
    gptq = dequantize(gptq_quantize(w, spec, h_cal))
    assert output_error(w, gptq, h_new) < 0.8 * output_error(w, rtn, h_new)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.short)
def test_gptq_keeps_the_static_grid_of_the_clip_search(spec):
    w = torch.randn(40, 96, generator=torch.Generator().manual_seed(3))
    h = (lambda x: x.T @ x / len(x))(correlated_inputs(seed=4))
    q = gptq_quantize(w, spec, h)
    scale, offset = choose_params(w, spec, "mse", torch.diag(h))
    assert torch.equal(q.scales, scale.half())
    assert (offset is None) == (q.offsets is None)
    assert q.codes.dtype == torch.uint8 and q.codes.shape == w.shape
    # Re-encoding the dequantized weight with the same scales gives back the same codes: it is on the grid.
    assert torch.equal(quantize(dequantize(q), spec, scale=q.scales.float(),
                                offset=None if q.offsets is None else q.offsets.float()).codes, q.codes)


def test_inputs_that_never_fire_do_not_break_the_inverse():
    x = correlated_inputs(cols=64)
    x[:, 5] = 0.0
    x[:, 40] = 0.0
    h = x.T @ x / len(x)
    w = torch.randn(16, 64, generator=torch.Generator().manual_seed(5))
    q = dequantize(gptq_quantize(w, QuantSpec("uniform", 4, "group", 32), h))
    assert torch.isfinite(q).all()


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError):
        gptq_quantize(torch.randn(8, 16), QuantSpec("uniform", 4, "per-channel"), torch.eye(8))
