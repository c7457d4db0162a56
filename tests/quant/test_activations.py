"""Activation quantization (`--act-bits`): per-token rounding, straight-through, stored and re-applied."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_model, tiny_processor_obj
from whisper_kdq.cli import app
from whisper_kdq.errors import UserError
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.activations import (activation_settings, fake_quant_tokens, float_activations,
                                           quantize_activations, remove_activation_quantization)
from whisper_kdq.quant.reader import read_packed
from whisper_kdq.quant.fake import convert_to_packed, prepare_qat
from whisper_kdq.quant.plan import plan_from_dict, plan_from_options

runner = CliRunner()


def _logits(model):
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([[50258, 50266, 50359, 400]])).logits


def test_tokens_are_rounded_per_row_within_half_a_step_and_gradients_pass_straight():
    x = torch.randn(5, 64) * torch.tensor([0.01, 1.0, 30.0, 1.0, 5.0])[:, None]  # rows of very different range
    x.requires_grad_(True)
    q = fake_quant_tokens(x, 8)
    step = x.detach().abs().amax(-1, keepdim=True) / 127
    assert ((q - x).abs() <= step / 2 + 1e-6).all()
    assert all(len(torch.unique(torch.round(q[i] / step[i]))) <= 255 for i in range(5))
    assert not torch.equal(q, x)
    q.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    assert len(torch.unique(torch.round(fake_quant_tokens(x, 4)[1] / (step[1] * 127 / 7)))) <= 15


def test_hooks_change_logits_switch_off_and_survive_a_deep_copy():
    model = tiny_model().eval()
    ref = _logits(model)
    quantize_activations(model, ["model.decoder.layers.0.fc1", "proj_out"], 4)
    rounded = _logits(model)
    assert not torch.allclose(rounded, ref)
    with float_activations(model):
        assert torch.equal(_logits(model), ref)
    clone = copy.deepcopy(model)
    remove_activation_quantization(clone)  # the copy's hooks are its own
    assert torch.equal(_logits(clone), ref) and torch.equal(_logits(model), rounded)
    assert activation_settings(model) == {"bits": 4, "layers": ["model.decoder.layers.0.fc1", "proj_out"]}
    assert activation_settings(clone) is None


def test_plan_field_is_validated_and_round_trips():
    plan = plan_from_options(bits=4, activation_bits=8)
    assert plan.as_dict()["activations"] == {"bits": 8}
    assert plan_from_dict(plan.as_dict()).activation_bits == 8
    assert "activations" not in plan_from_options(bits=4).as_dict()  # weight-only plans unchanged
    with pytest.raises(UserError, match=r"plan\.activations\.bits: activation bits must be an integer from 4 to 8"):
        plan_from_dict({**plan.as_dict(), "activations": {"bits": 3}})
    with pytest.raises(UserError, match="--act-bits"):
        plan_from_options(bits=4, activation_bits=9)


def test_packed_file_stores_the_setting_and_reproduces_the_fake_quant_forward(tmp_path):
    plan = plan_from_options(bits=4, group_size=32, activation_bits=6)
    model = prepare_qat(tiny_model(), plan).eval()
    fake = _logits(model)
    with float_activations(model):
        weight_only = _logits(model)
    assert not torch.allclose(fake, weight_only)
    convert_to_packed(model, tiny_processor_obj(), plan, tmp_path / "a6.safetensors")
    _, meta = read_packed(tmp_path / "a6.safetensors")
    stored = json.loads(meta["activations"])
    assert meta["format_version"] == "4" and stored["bits"] == 6  # 4: the encoder positions are generated too
    assert "proj_out" in stored["layers"]
    assert "model.encoder.layers.0.fc1" in stored["layers"] and "model.encoder.conv1" not in stored["layers"]
    loaded = load_model(str(tmp_path / "a6.safetensors"))
    assert loaded.info["activation_bits"] == 6
    packed = _logits(loaded.model)
    assert (packed - fake).abs().max() <= 1e-4 * fake.abs().max()


def test_cli_act_bits(tiny_model_dir, tmp_path):
    out = tmp_path / "w8a8.safetensors"
    result = runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--bits", "8", "--act-bits", "8",
                                 "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["activation_bits"] == 8
    assert load_model(str(out)).info["activation_bits"] == 8
    bad = runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--bits", "8", "--act-bits", "2",
                              "--out", str(tmp_path / "x.safetensors")])
    assert bad.exit_code == 2 and "activation bits must be an integer from 4 to 8" in bad.output
    assert "Traceback" not in bad.output and not (tmp_path / "x.safetensors").exists()
    # Exports run its weights elsewhere and say what the engine does with activations.
    ct2 = runner.invoke(app, ["export", "--model", str(out), "--format", "ct2", "--out", str(tmp_path / "ct2"), "--json"])
    assert ct2.exit_code == 0, ct2.output
    info = json.loads(ct2.stdout)
    assert info["precision"] == "int8" and "rounds activations to 8 bits per row at run time" in info["reason"]
    hf = runner.invoke(app, ["export", "--model", str(out), "--format", "hf", "--out", str(tmp_path / "hf"), "--json"])
    assert hf.exit_code == 0 and "activations float in this format" in json.loads(hf.stdout)["reason"]
