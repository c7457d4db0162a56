"""Row splits: the listed rows of a weight at other bits, in the plan, the packed file and QAT."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import tiny_model, tiny_processor_obj
from whisper_kdq.errors import CheckpointError, UserError
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.checkpoint import predict_packed, quantized_copy, save_packed
from whisper_kdq.quant.reader import packed_codes, read_packed
from whisper_kdq.quant.fake import convert_to_packed, matching_init, prepare_qat, qat_modules
from whisper_kdq.quant.plan import plan_from_dict
from whisper_kdq.quant.rows import RowSplit, merge_rows, split_rows, token_rows
from whisper_kdq.quant.schemes import QuantSpec

EMB = r"^model\.decoder\.embed_tokens\.weight$"
ROWS = [0, 5, 220, 400, 50257, 50258, 51864]
IDS = torch.tensor([[50258, 50266, 50359, 400, 220, 17]])


def _plan(rows=ROWS, bits=4, **extra) -> "Plan":  # noqa: F821
    return plan_from_dict({"default": {"scheme": "uniform", "bits": 2, "granularity": "group", "group_size": 32,
                                       "full_range": True},
                           "rows": [{"pattern": EMB, "bits": bits, "rows": rows}], **extra})


def _logits(model):
    features = torch.randn(1, 80, 3000, generator=torch.Generator().manual_seed(0))
    return model(input_features=features, decoder_input_ids=IDS).logits


def test_split_and_merge_are_inverse():
    w = torch.randn(10, 3)
    split = RowSplit((1, 4, 9), QuantSpec(bits=4))
    listed, others = split_rows(w, split)
    assert torch.equal(listed, w[[1, 4, 9]]) and others.shape == (7, 3)
    assert torch.equal(merge_rows(listed, others, split), w)


def test_plan_round_trips_and_checks_rows():
    plan = _plan(rows=[400, 5, 5, 0])
    assert plan.row_rules[0].rows == (0, 5, 400)  # sorted, distinct
    again = plan_from_dict(json.loads(json.dumps(plan.as_dict())))
    assert again.row_rules == plan.row_rules
    split = plan.splits(tiny_model().state_dict())["model.decoder.embed_tokens.weight"]
    assert split.spec.bits == 4 and split.spec.full_range and split.spec.group_size == 32
    with pytest.raises(UserError, match=r"out of range"):
        _plan(rows=[51865]).splits(tiny_model().state_dict())
    with pytest.raises(UserError, match=r"rows\[0\]\.bits"):
        _plan(bits=9)
    # A tensor kept float stays float (a plan restricted to the encoder keeps its embedding rule).
    assert _plan(rules=[{"pattern": EMB, "float": True}]).splits(tiny_model().state_dict()) == {}


def test_packed_file_stores_both_parts_and_loads_as_in_memory(tmp_path):
    model, plan = tiny_model(), _plan()
    out = tmp_path / "split.safetensors"
    summary = save_packed(out, model, tiny_processor_obj(), plan)
    assert out.stat().st_size == summary["file_bytes"] == predict_packed(model, plan, tiny_processor_obj())["file_bytes"]
    tensors, meta = read_packed(out)
    assert meta["format_version"] == "4"  # row splits, and the encoder positions generated
    name = "model.decoder.embed_tokens.weight"
    assert tensors[name + "::rows"].tolist() == ROWS
    # 7 rows of 64 at 4 bits, the other 51 858 at 2 bits
    assert tensors[name + "::rows::codes"].numel() == 7 * 64 * 4 // 8
    assert tensors[name + "::codes"].numel() == (51865 - 7) * 64 * 2 // 8
    entry = json.loads(meta["quantization"])[name]
    assert entry["rows"] == {"bits": 4, "count": 7, "groups": 14} and entry["groups"] == (51865 - 7) * 2
    loaded = load_model(str(out))
    with torch.no_grad():
        got, want = _logits(loaded.model), _logits(quantized_copy(model, plan))
    assert torch.allclose(got, want, atol=1e-5)
    # The listed rows are closer to the float weights than the 2-bit ones.
    err = (loaded.model.model.decoder.embed_tokens.weight - model.model.decoder.embed_tokens.weight).abs()
    others = [r for r in range(51865) if r not in ROWS]
    assert err[ROWS].mean() < err[others].mean() / 2
    assert loaded.info["tensors"][name]["rows"]["bits"] == 4


def test_a_version_1_file_with_row_splits_is_refused(tmp_path):
    out = tmp_path / "split.safetensors"
    save_packed(out, tiny_model(), tiny_processor_obj(), _plan())
    raw = out.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = raw[8:8 + n].replace(b'"format_version":"4"', b'"format_version":"1"')
    out.write_bytes(raw[:8] + header + raw[8 + n:])
    with pytest.raises(CheckpointError, match="row splits in a format version 1"):
        read_packed(out)


def test_qat_with_a_row_split_packs_to_the_same_logits_and_resumes_from_its_codes(tmp_path):
    plan = _plan()
    model = prepare_qat(tiny_model(), plan)
    fqs = qat_modules(model)
    name = "model.decoder.embed_tokens.weight"
    assert fqs[name].spec.bits == 2 and fqs[name + "::rows"].spec.bits == 4
    _logits(model).logsumexp(-1).mean().backward()
    assert fqs[name + "::rows"].scale.grad.abs().sum() > 0 and fqs[name].scale.grad.abs().sum() > 0
    with torch.no_grad():
        fqs[name + "::rows"].scale.mul_(0.9)
        fake = _logits(model)
    out = tmp_path / "qat.safetensors"
    convert_to_packed(model, tiny_processor_obj(), plan, out)
    with torch.no_grad():
        packed = _logits(load_model(str(out)).model)
    assert (packed - fake).abs().max() <= 1e-4 * fake.abs().max()
    # Training goes on from the file's codes: both parts fit the plan; another row list does not.
    state = tiny_model().state_dict()
    codes = packed_codes(out)
    assert {name, name + "::rows"} <= set(matching_init(codes, plan, state))
    assert name not in matching_init(codes, _plan(rows=ROWS[:-1]), state)
    resumed = prepare_qat(tiny_model(), plan, init=matching_init(codes, plan, state))
    with torch.no_grad():
        assert (_logits(resumed) - fake).abs().max() <= 1e-4 * fake.abs().max()


def test_token_rows_are_the_labels_rows_plus_special_tokens():
    from whisper_kdq.data.manifest import Utterance
    from whisper_kdq.distill.data import label_ids

    tok = tiny_processor_obj().tokenizer
    utts = [Utterance("a", "hello world", "en"), Utterance("b", "こんにちは", "ja")]
    rows = token_rows(tok, utts)
    assert rows == sorted(set(rows))
    assert set(label_ids(tok, "hello world", "en")) <= set(rows)
    assert set(label_ids(tok, "こんにちは", "ja")) <= set(rows)
    assert tok.convert_tokens_to_ids("<|fr|>") in rows
    assert len(rows) < 2000  # a few thousand of 51 865 at most: the point of the split
