"""Generated tensors: the encoder's sinusoidal position table is named in the packed file, not stored."""

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
from whisper_kdq.quant.generated import ENCODER_POSITIONS, generated_tensors, sinusoids
from whisper_kdq.quant.plan import plan_from_options

PLAN = dict(bits=4, clip="max")


def _perturbed():
    model = tiny_model()
    with torch.no_grad():
        model.model.encoder.embed_positions.weight[3, 5] += 0.01  # no longer the formula's table
    return model


def test_the_formula_is_whisper_s_and_only_an_untouched_table_matches():
    from transformers.models.whisper.modeling_whisper import sinusoids as reference

    assert torch.allclose(sinusoids(1500, 512), reference(1500, 512), atol=1e-6)
    assert generated_tensors(tiny_model().state_dict()) == {ENCODER_POSITIONS: "sinusoids"}
    assert generated_tensors(_perturbed().state_dict()) == {}
    half = tiny_model().state_dict()
    half[ENCODER_POSITIONS] = half[ENCODER_POSITIONS].half()  # float16 rounding, as hub files store it
    assert generated_tensors(half) == {ENCODER_POSITIONS: "sinusoids"}


def test_the_packed_file_names_the_table_and_load_rebuilds_it(tmp_path):
    model, plan = tiny_model(), plan_from_options(**PLAN)
    out = tmp_path / "g.safetensors"
    summary = save_packed(out, model, tiny_processor_obj(), plan)
    tensors, meta = read_packed(out)
    assert ENCODER_POSITIONS not in tensors and meta["format_version"] == "4"
    assert json.loads(meta["generated"]) == {ENCODER_POSITIONS: {"formula": "sinusoids", "shape": [1500, 64]}}
    # A table that is not the formula's is stored (float32, by default), in a version-1 file.
    stored = predict_packed(_perturbed(), plan, tiny_processor_obj())
    assert stored["file_bytes"] - summary["file_bytes"] >= 1500 * 64 * 4
    save_packed(tmp_path / "s.safetensors", _perturbed(), tiny_processor_obj(), plan)
    assert read_packed(tmp_path / "s.safetensors")[1]["format_version"] == "1"
    loaded = load_model(str(out))
    assert torch.equal(loaded.model.model.encoder.embed_positions.weight, sinusoids(1500, 64))
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[50258, 50266, 50359]])
    with torch.no_grad():
        got = loaded.model(input_features=features, decoder_input_ids=ids).logits
        want = quantized_copy(model, plan)(input_features=features, decoder_input_ids=ids).logits
    assert torch.equal(got, want)


def test_qat_leaves_the_generated_table_exact_as_the_file_holds_it():
    from torch.nn.utils import parametrize

    from whisper_kdq.quant.fake import prepare_qat

    model = prepare_qat(tiny_model(), plan_from_options(bits=4, overrides=["embed_positions=8"]))
    assert not parametrize.is_parametrized(model.model.encoder.embed_positions, "weight")
    assert parametrize.is_parametrized(model.model.decoder.embed_positions, "weight")  # learned: quantized
    assert torch.equal(model.model.encoder.embed_positions.weight, sinusoids(1500, 64))


def _rewrite_meta(raw: bytes, **changes) -> bytes:
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    header["__metadata__"].update(changes)
    header["__metadata__"] = {k: v for k, v in header["__metadata__"].items() if v is not None}
    new = json.dumps(header).encode()
    new += b" " * ((-len(new)) % 8)
    return struct.pack("<Q", len(new)) + new + raw[8 + n:]


@pytest.mark.parametrize("changes, match", [
    (dict(generated=None), "version 4 needs generated tensors"),
    (dict(format_version="3"), "version 3 has no generated tensors"),
    (dict(generated=json.dumps({ENCODER_POSITIONS: {"formula": "cosines", "shape": [1500, 64]}})), "unknown generated"),
    (dict(generated="[1, 2]"), "damaged header"),
])
def test_damaged_generated_records_are_checkpoint_errors(tmp_path, changes, match):
    out = tmp_path / "g.safetensors"
    save_packed(out, tiny_model(), tiny_processor_obj(), plan_from_options(**PLAN))
    out.write_bytes(_rewrite_meta(out.read_bytes(), **changes))
    with pytest.raises(CheckpointError, match=match):
        load_model(str(out))


@pytest.mark.integration
def test_real_whisper_base_s_table_is_generated_and_transcribes_as_before(tmp_path, fixture_manifest):
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.evaluate import evaluate_model

    base = load_model("base")
    plan = plan_from_options(bits=8, overrides=["embed_positions=8"])
    out = tmp_path / "base-u8.safetensors"
    summary = save_packed(out, base.model, base.processor, plan)
    # 1 500 x 512 values at 8 bits (codes and one float16 scale per group of 128) are not in the file.
    assert summary["tensors"][ENCODER_POSITIONS]["bytes"] == 0
    assert predict_packed(base.model, plan, base.processor)["file_bytes"] == summary["file_bytes"] == out.stat().st_size
    loaded = load_model(str(out))
    table = loaded.model.model.encoder.embed_positions.weight
    assert (table - base.model.model.encoder.embed_positions.weight).abs().max() < 1e-3
    dataset = load_dataset(fixture_manifest)
    memory = evaluate_model(type(base)(quantized_copy(base.model, plan), base.processor, "memory", "packed", None, 0), dataset)
    packed = evaluate_model(loaded, dataset)
    assert [p["hypothesis"] for p in packed["predictions"]] == [p["hypothesis"] for p in memory["predictions"]]
