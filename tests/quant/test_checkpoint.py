"""The packed file: predicted size = written size, load = in-memory quantization, corruption detected."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from tests.conftest import tiny_model, tiny_processor_obj
from whisper_kdq.errors import CheckpointError
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.checkpoint import predict_packed, quantized_copy, save_packed
from whisper_kdq.quant.reader import read_packed
from whisper_kdq.quant.plan import plan_from_options

PLANS = {
    "u8c": dict(bits=8, clip="max"),
    "apot4g128": dict(bits=4, scheme="apot"),  # with the clipping search (slower)
    "u3g32-mixed": dict(bits=3, group_size=32, component_bits={"encoder": 5}, overrides=["fc1=float", "q_proj=apot6t"],
                        clip="max"),
    "u2t-asym": dict(bits=2, granularity="per-tensor", symmetric=False, clip="max"),
    "u2g32-full": dict(bits=2, group_size=32, full_range=True, overrides=["fc1=uniform3g32s"]),
}


def _logits(model):
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=torch.tensor([[50258, 50266, 50359]])).logits


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.mark.parametrize("name", list(PLANS))
def test_save_load_matches_memory_and_prediction(tmp_path, model, name):
    plan = plan_from_options(**PLANS[name])
    path = tmp_path / "m.safetensors"
    predicted = predict_packed(model, plan, tiny_processor_obj())
    summary = save_packed(path, model, tiny_processor_obj(), plan)
    assert predicted["file_bytes"] == summary["file_bytes"] == path.stat().st_size
    loaded = load_model(str(path))
    assert loaded.kind == "packed" and loaded.size_bytes == path.stat().st_size
    assert torch.equal(_logits(loaded.model), _logits(quantized_copy(model, plan)))
    assert loaded.model.proj_out.weight.data_ptr() == loaded.model.model.decoder.embed_tokens.weight.data_ptr()
    spec = loaded.info["tensors"]["model.decoder.layers.0.self_attn.k_proj.weight"]
    assert set(spec) == {"scheme", "bits", "symmetric", "granularity", "group_size", "full_range"}
    assert loaded.processor.tokenizer.convert_tokens_to_ids("<|ja|>") == 50266


def test_overwrite_needs_force(tmp_path, model):
    path = tmp_path / "m.safetensors"
    plan = plan_from_options(bits=8, clip="max")
    save_packed(path, model, tiny_processor_obj(), plan)
    with pytest.raises(Exception, match="--force"):
        save_packed(path, model, tiny_processor_obj(), plan)
    save_packed(path, model, tiny_processor_obj(), plan, force=True)


@pytest.fixture(scope="module")
def packed(tmp_path_factory, model):
    path = tmp_path_factory.mktemp("packed") / "m.safetensors"
    save_packed(path, model, tiny_processor_obj(), plan_from_options(bits=4, clip="max"))
    return path.read_bytes()


def _rewrite_meta(raw: bytes, **changes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"].update(changes)
    new = json.dumps(header).encode()
    new += b" " * ((-len(new)) % 8)
    return struct.pack("<Q", len(new)) + new + raw[8 + n:]


@pytest.mark.parametrize("damage, match", [
    (lambda raw: raw[: len(raw) - 100], "truncated"),
    (lambda raw: raw[:5], "truncated"),
    (lambda raw: raw[:-1000] + bytes([raw[-1000] ^ 1]) + raw[-999:], "checksum mismatch"),
    (lambda raw: _rewrite_meta(raw, format_version="8"), "unsupported format version '8'"),
    (lambda raw: _rewrite_meta(raw, format_version="2"), "version 2 needs activation settings"),
    (lambda raw: _rewrite_meta(raw, format="other"), "not a whisper-kdq packed checkpoint"),
    (lambda raw: raw[:8] + b"\xff" + raw[9:], "damaged header"),
])
def test_damaged_files_are_checkpoint_errors(tmp_path, packed, damage, match):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(damage(packed))
    with pytest.raises(CheckpointError, match=match):
        read_packed(path)
    with pytest.raises(CheckpointError):
        load_model(str(path))


def test_file_is_standard_safetensors(tmp_path, packed):
    from safetensors import safe_open

    path = tmp_path / "m.safetensors"
    path.write_bytes(packed)
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["format"] == "whisper-kdq-packed"
        codes = f.get_tensor("model.decoder.layers.0.fc1.weight::codes")
        assert codes.dtype == torch.uint8 and codes.numel() == 128 * 64 // 2
