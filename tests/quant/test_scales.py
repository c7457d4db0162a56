"""8-bit log scales and fp16 floats (format version 5): the grid's error bound, exact round trips, smaller files
whose logits equal the in-memory quantization and the fake-quantized forward."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_model, tiny_processor_obj
from tests.quant.test_checkpoint import _rewrite_meta
from whisper_kdq.errors import CheckpointError, UserError
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.checkpoint import predict_packed, quantized_copy, save_packed
from whisper_kdq.quant.reader import read_packed
from whisper_kdq.quant.fake import convert_to_packed, prepare_qat, qat_modules
from whisper_kdq.quant.plan import plan_from_dict, plan_from_options
from whisper_kdq.quant.scales import SCALE_BLOCK, decode_scales, encode_scales, stored_scales


def _logits(model):
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([[50258, 50266, 50359, 400]])).logits


def test_log_codes_bound_the_relative_error_and_round_trip_exactly():
    g = torch.Generator().manual_seed(0)
    scale = torch.exp(torch.randn(1000, generator=g) * 1.5) * 1e-2 * torch.sign(torch.randn(1000, generator=g))
    scale[7] = 0.0  # an all-zero group's scale: 1, as with fp16
    codes, ranges = encode_scales(scale)
    assert codes.dtype == torch.uint8 and codes.shape == (1000,) and ranges.shape == (-(-1000 // SCALE_BLOCK), 2)
    back = decode_scales(codes, ranges)
    kept = scale != 0
    assert torch.equal(back[kept].sign(), scale[kept].sign()) and back[7] > 0
    # At most half a step (in octaves) from the original, each block's step its own.
    step = ranges[:, 1].float().repeat_interleave(SCALE_BLOCK)[:1000]
    octaves = (back[kept].abs().log2() - scale[kept].abs().log2()).abs()
    assert (octaves <= step[kept] / 2 + 1e-4).all() and octaves.max() > 0
    # The stored values are a fixed point: re-encoding them changes nothing (a file re-packed stays the same).
    again = encode_scales(back)
    assert torch.equal(again[0], codes) and torch.equal(again[1], ranges)
    assert torch.equal(stored_scales(back, 8), back) and torch.equal(stored_scales(scale, 8), back)


def _plan(**extra):
    # 8-bit scales are for low-bit weights: a 0.25 % scale error is a third of an 8-bit step, a thirtieth of a 4-bit one.
    return plan_from_options(bits=4, group_size=32, component_bits={"conv": 4}, overrides=["fc1=uniform3g32f"], **extra)


def test_a_version_5_file_is_smaller_and_loads_to_the_in_memory_quantization(tmp_path):
    model = tiny_model()
    small, plain = _plan(scale_bits=8, floats="f16"), _plan()
    predicted = predict_packed(model, small, tiny_processor_obj())
    summary = save_packed(tmp_path / "v5.safetensors", model, tiny_processor_obj(), small)
    before = save_packed(tmp_path / "v4.safetensors", model, tiny_processor_obj(), plain)
    assert predicted["file_bytes"] == summary["file_bytes"] == (tmp_path / "v5.safetensors").stat().st_size
    tensors, meta = read_packed(tmp_path / "v5.safetensors")
    assert meta["format_version"] == "5"
    k = "model.decoder.layers.0.self_attn.k_proj.weight"
    assert tensors[f"{k}::scales"].dtype == torch.uint8 and tensors[f"{k}::scale_ranges"].dtype == torch.float16
    assert tensors["model.decoder.layers.0.fc1.bias"].dtype == torch.float16
    # Scales: 2 bytes -> 1 + 4/64; floats: 4 -> 2 bytes.
    floats = sum(t.numel() for n, t in tensors.items() if "::" not in n and n != "__tokenizer__")
    scales = sum(t.numel() for n, t in tensors.items() if n.endswith("::scales"))
    blocks = sum(-(-t.numel() // SCALE_BLOCK) for n, t in tensors.items() if n.endswith("::scales"))
    assert before["payload_bytes"] - summary["payload_bytes"] == 2 * floats + scales - 4 * blocks
    assert summary["file_bytes"] < before["file_bytes"]
    loaded = load_model(str(tmp_path / "v5.safetensors"))
    assert loaded.info["format_version"] == 5 and loaded.info["tensors"][k]["scale_bits"] == 8
    assert torch.allclose(_logits(loaded.model), _logits(quantized_copy(model, small).half().float()), atol=1e-3)
    # fp16 floats and 8-bit scales move the weights a little: far less than the 3/4-bit codes do.
    ref = load_model(str(tmp_path / "v4.safetensors")).model.state_dict()
    new, float_ = loaded.model.state_dict(), model.state_dict()
    for name in ("model.encoder.conv2.weight", "model.encoder.layers.0.fc1.weight", "model.decoder.embed_tokens.weight",
                 "model.decoder.layers.1.self_attn.k_proj.weight"):
        assert 0 < (new[name] - ref[name]).norm() < 0.3 * (ref[name] - float_[name]).norm(), name


def test_qat_with_8_bit_scales_packs_to_the_same_logits(tmp_path):
    plan = _plan(scale_bits=8)
    model = prepare_qat(tiny_model(), plan)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    model(input_features=torch.randn(1, 80, 3000), decoder_input_ids=torch.tensor([[50258, 400]])).logits.logsumexp(-1).mean().backward()
    optimizer.step()
    fake = _logits(model)
    convert_to_packed(model, tiny_processor_obj(), plan, tmp_path / "qat.safetensors")
    packed = _logits(load_model(str(tmp_path / "qat.safetensors")).model)
    assert (packed - fake).abs().max() <= 1e-4 * fake.abs().max()
    fc1 = qat_modules(model)["model.decoder.layers.0.fc1.weight"]
    tensors, _ = read_packed(tmp_path / "qat.safetensors")
    stored = decode_scales(tensors["model.decoder.layers.0.fc1.weight::scales"],
                           tensors["model.decoder.layers.0.fc1.weight::scale_ranges"])
    assert torch.equal(stored, stored_scales(fc1.scale.detach(), 8))


def test_8_bit_scales_outside_version_5_are_refused(tmp_path):
    save_packed(tmp_path / "v5.safetensors", tiny_model(), tiny_processor_obj(), _plan(scale_bits=8))
    (tmp_path / "bad.safetensors").write_bytes(_rewrite_meta((tmp_path / "v5.safetensors").read_bytes(), format_version="4"))
    with pytest.raises(CheckpointError, match="format version 4 has no 8-bit scales"):
        load_model(str(tmp_path / "bad.safetensors"))


@pytest.mark.parametrize("data, match", [
    ({"default": {"bits": 4, "scale_bits": 12}}, "scale bits must be 16"),
    ({"default": {"bits": 4, "scale_bits": True}}, "scale_bits: expected 16 or 8"),
    ({"default": {"bits": 4}, "floats": "bf16"}, "floats: expected one of f32, f16"),
])
def test_plan_fields_are_checked(data, match):
    with pytest.raises(UserError, match=match):
        plan_from_dict(data)


def test_plan_json_round_trips_the_storage_fields():
    plan = plan_from_dict({"default": {"bits": 4, "group_size": 128, "scale_bits": 8}, "floats": "f16",
                           "rules": [{"pattern": "fc1", "bits": 3}]})
    again = plan_from_dict(json.loads(json.dumps(plan.as_dict())))
    assert again.floats == "f16" and again.default.scale_bits == 8
    state = tiny_model().state_dict()
    assert again.resolve(state)["model.decoder.layers.0.fc1.weight"].scale_bits == 8  # a rule keeps the default's
