"""1-bit codes (format version 6): two levels per group (offset, offset + scale) at the means of the group's
halves; refused where they would not work; packed files that load to the in-memory quantization and to the
fake-quantized forward; headers that claim otherwise are refused."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import tiny_model, tiny_processor_obj
from tests.quant.test_checkpoint import _rewrite_meta
from tests.quant.test_scales import _logits
from whisper_kdq.errors import CheckpointError, UserError
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.checkpoint import predict_packed, quantized_copy, save_packed
from whisper_kdq.quant.fake import convert_to_packed, prepare_qat
from whisper_kdq.quant.plan import plan_from_dict
from whisper_kdq.quant.reader import read_packed
from whisper_kdq.quant.schemes import QuantSpec, dequantize, parse_spec, quantize

EMB = r"^model\.decoder\.embed_tokens\.weight$"


def test_the_two_levels_are_the_means_of_the_group_halves():
    w = torch.randn(8, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    spec = parse_spec("uniform1g128a")
    assert spec == QuantSpec("uniform", 1, "group", 128)  # at 1 bit a uniform spec is asymmetric unless told
    q = quantize(w, spec, clip="max")
    back = dequantize(q)
    assert set(q.codes.unique().tolist()) == {0, 1}
    for g in w.reshape(-1, 128)[:4]:
        upper = g > g.mean()
        levels = sorted(set(dequantize(quantize(g[None], spec, clip="max")).reshape(-1).tolist()))
        assert levels == pytest.approx([g[~upper].mean().item(), g[upper].mean().item()], rel=2e-3)
    # Sign quantization of Gaussian weights keeps 1 - 2/pi of the variance as error; the group's extremes would
    # keep far more. The mse search can only do as well or better.
    err = ((back - w) ** 2).mean() / (w ** 2).mean()
    assert 0.3 < err < 0.4
    assert ((dequantize(quantize(w, spec, clip="mse")) - w) ** 2).mean() <= ((back - w) ** 2).mean() + 1e-12


def test_a_constant_group_is_exact():
    w = torch.full((2, 128), 0.5)
    assert torch.equal(dequantize(quantize(w, parse_spec("uniform1g128a"))), w)


@pytest.mark.parametrize("kwargs", [dict(symmetric=True), dict(symmetric=True, full_range=True), dict(scheme="apot")])
def test_one_bit_grids_that_would_not_work_are_refused(kwargs):
    fields = {"scheme": "uniform", "bits": 1, "granularity": "group", "group_size": 128, **kwargs}
    with pytest.raises(UserError, match="1-bit quantization is uniform with an offset"):
        QuantSpec(**fields)


def test_a_plan_rule_must_ask_for_the_offset():
    with pytest.raises(UserError, match=r"rules\[0\].*symmetric false"):
        plan_from_dict({"default": {"bits": 3, "full_range": True}, "rules": [{"pattern": EMB, "bits": 1}]}).resolve(
            tiny_model().state_dict())


def _plan(rows=(0, 5, 220, 400, 50257, 50258, 51864)):
    return plan_from_dict({"default": {"scheme": "uniform", "bits": 3, "granularity": "group", "group_size": 32,
                                       "full_range": True, "scale_bits": 8},
                           "rules": [{"pattern": EMB, "bits": 1, "symmetric": False}],
                           "rows": [{"pattern": EMB, "bits": 4, "rows": list(rows)}]})


def test_a_version_6_file_loads_to_the_in_memory_quantization(tmp_path):
    model = tiny_model()
    plan = _plan()
    predicted = predict_packed(model, plan, tiny_processor_obj())
    summary = save_packed(tmp_path / "v6.safetensors", model, tiny_processor_obj(), plan)
    assert predicted["file_bytes"] == summary["file_bytes"] == (tmp_path / "v6.safetensors").stat().st_size
    tensors, meta = read_packed(tmp_path / "v6.safetensors")
    assert meta["format_version"] == "6"
    emb = model.state_dict()["model.decoder.embed_tokens.weight"]
    cold = emb.shape[0] - 7
    # The cold rows: one bit a weight, an 8-bit scale and an fp16 offset a group of 32.
    assert tensors["model.decoder.embed_tokens.weight::codes"].numel() == -(-cold * emb.shape[1] // 8)
    assert tensors["model.decoder.embed_tokens.weight::offsets"].numel() == cold * emb.shape[1] // 32
    loaded = load_model(str(tmp_path / "v6.safetensors"))
    assert loaded.info["tensors"]["model.decoder.embed_tokens.weight"]["bits"] == 1
    assert torch.allclose(_logits(loaded.model), _logits(quantized_copy(model, plan)), atol=1e-4)
    # A 1-bit file under an older version number, or a version 6 header without 1-bit codes, is refused.
    (tmp_path / "bad.safetensors").write_bytes(_rewrite_meta((tmp_path / "v6.safetensors").read_bytes(), format_version="5"))
    with pytest.raises(CheckpointError, match="format version 5 has no 1-bit codes"):
        load_model(str(tmp_path / "bad.safetensors"))


def test_qat_at_one_bit_packs_to_the_same_logits(tmp_path):
    plan = _plan()
    model = prepare_qat(tiny_model(), plan)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    model(input_features=torch.randn(1, 80, 3000), decoder_input_ids=torch.tensor([[50258, 400, 9]])).logits.logsumexp(-1).mean().backward()
    optimizer.step()
    fake = _logits(model)
    convert_to_packed(model, tiny_processor_obj(), plan, tmp_path / "qat.safetensors")
    packed = _logits(load_model(str(tmp_path / "qat.safetensors")).model)
    assert (packed - fake).abs().max() <= 1e-4 * fake.abs().max()
