"""benchmarks/swap_encoder.py: one packed file's decoder with another's encoder, codes copied exactly."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import swap_encoder  # noqa: E402

from tests.conftest import tiny_model, tiny_processor_obj  # noqa: E402
from whisper_kdq.errors import UserError  # noqa: E402
from whisper_kdq.quant.checkpoint import save_packed  # noqa: E402
from whisper_kdq.quant.reader import load_packed, packed_codes  # noqa: E402
from whisper_kdq.quant.plan import plan_from_options  # noqa: E402


def test_the_encoder_comes_from_one_file_and_everything_else_from_the_other(tmp_path):
    plan = plan_from_options(bits=3)
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    save_packed(a, tiny_model(seed=1), tiny_processor_obj(), plan)
    save_packed(b, tiny_model(seed=2), tiny_processor_obj(), plan)
    out = tmp_path / "ab.safetensors"
    swap_encoder.swap_encoder(a, b, plan, out)
    got, from_a, from_b = packed_codes(out), packed_codes(a), packed_codes(b)
    assert set(got) == set(from_a)
    for name, q in got.items():
        want = from_b[name] if name.startswith("model.encoder.") else from_a[name]
        assert torch.equal(q.codes, want.codes) and torch.equal(q.scales, want.scales), name
    assert not torch.equal(got["model.encoder.layers.0.fc1.weight"].codes, from_a["model.encoder.layers.0.fc1.weight"].codes)
    state = load_packed(out).model.state_dict()
    assert torch.equal(state["model.decoder.layers.0.fc1.weight"], load_packed(a).model.state_dict()["model.decoder.layers.0.fc1.weight"])
    # Nothing is overwritten without force; a file of another encoder depth is one clear error.
    with pytest.raises(UserError):
        swap_encoder.swap_encoder(a, b, plan, out)
    c = tmp_path / "c.safetensors"
    save_packed(c, tiny_model(seed=3, encoder_layers=3), tiny_processor_obj(), plan)
    with pytest.raises(UserError, match="3 encoder blocks"):
        swap_encoder.swap_encoder(a, c, plan, tmp_path / "x.safetensors")


def test_a_weight_the_plan_moves_to_other_bits_is_quantized_anew(tmp_path):
    """The file's decoder at 3 bits, the new plan's fc1 at 4: fc1 gets a 4-bit grid from its dequantized values (close
    to them: ~7 % relative error here), every other weight keeps its codes."""
    a, b, out = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "ab.safetensors"
    save_packed(a, tiny_model(seed=1), tiny_processor_obj(), plan_from_options(bits=3))
    save_packed(b, tiny_model(seed=2), tiny_processor_obj(), plan_from_options(bits=3))
    fc1 = "model.decoder.layers.0.fc1.weight"
    swap_encoder.swap_encoder(a, b, plan_from_options(bits=3, overrides=[r"decoder\.layers\.0\.fc1=4"]), out)
    got, from_a = packed_codes(out), packed_codes(a)
    assert got[fc1].spec.bits == 4 and from_a[fc1].spec.bits == 3
    w, w_a = load_packed(out).model.state_dict()[fc1], load_packed(a).model.state_dict()[fc1]
    rel = ((w - w_a).norm() / w_a.norm()).item()
    assert 0 < rel < 0.1, rel  # a 4-bit grid over 3-bit values: close, not equal
    fc2 = "model.decoder.layers.0.fc2.weight"
    assert torch.equal(got[fc2].codes, from_a[fc2].codes) and torch.equal(got[fc2].scales, from_a[fc2].scales)
