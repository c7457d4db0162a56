"""benchmarks/row_split_plan.py: the encoder kept, the decoder raised within the base plan's bytes."""

from __future__ import annotations

import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import row_split_plan  # noqa: E402

from tests.conftest import tiny_model  # noqa: E402
from whisper_kdq.quant.checkpoint import predict_packed  # noqa: E402
from whisper_kdq.quant.plan import plan_from_dict  # noqa: E402

DEC = r"^model\.decoder\.layers\.{}\.{}\.weight$"


def test_build_keeps_the_encoder_and_spends_the_freed_bytes_on_the_decoder():
    model = tiny_model()
    spec = {"scheme": "uniform", "bits": 3, "granularity": "group", "group_size": 32, "full_range": True}
    enc = {"pattern": r"^model\.encoder\.layers\.0\.fc1\.weight$", "bits": 2}
    units = [{"unit": f"decoder.{i}.{m}", "pattern": DEC.format(i, m), "params": 64 * 128,
              "quant_loss": float(1 + i + (m == "fc2"))} for i in range(2) for m in ("fc1", "fc2")]
    base = {"default": spec, "rules": [enc, *[{"pattern": u["pattern"], "bits": 2} for u in units]],
            "selection": {"units": units}}

    def size_of(plan: dict) -> int:
        return predict_packed(model, plan_from_dict({k: v for k, v in plan.items() if k != "row_split"}))["file_bytes"]

    plan = row_split_plan.build(base, [0, 7, 50257], size_of, cold_bits=2, hot_bits=4, decoder_bits=3)
    info = plan["row_split"]
    assert info["bytes"] <= info["base_bytes"] == size_of(base)
    assert enc in plan["rules"] and plan["rows"][0]["rows"] == [0, 7, 50257]
    # The embedding's 2-bit rows free far more than the four small decoder matrices need at 4 bits.
    assert sorted(info["raised"]) == sorted(u["unit"] for u in units)
    resolved = plan_from_dict({k: v for k, v in plan.items() if k != "row_split"}).resolve(model.state_dict())
    assert resolved["model.decoder.layers.1.fc2.weight"].bits == 4
    assert resolved["model.decoder.layers.0.self_attn.q_proj.weight"].bits == 3
    assert resolved["model.decoder.embed_tokens.weight"].bits == 2
    assert resolved["model.encoder.layers.0.fc1.weight"].bits == 2


def test_build_with_encoder_bits_replaces_the_encoder_rules():
    model = tiny_model()
    spec = {"scheme": "uniform", "bits": 3, "granularity": "group", "group_size": 32, "full_range": True}
    base = {"default": spec, "rules": [{"pattern": r"^model\.encoder\.layers\.0\.fc1\.weight$", "bits": 2}],
            "selection": {"units": []}}

    def size_of(plan: dict) -> int:
        return predict_packed(model, plan_from_dict({k: v for k, v in plan.items() if k != "row_split"}))["file_bytes"]

    plan = row_split_plan.build(base, [0, 7], size_of, cold_bits=2, hot_bits=4, decoder_bits=3, encoder_bits=3)
    resolved = plan_from_dict({k: v for k, v in plan.items() if k != "row_split"}).resolve(model.state_dict())
    assert resolved["model.encoder.layers.0.fc1.weight"].bits == 3 and plan["row_split"]["encoder_bits"] == 3
    assert plan["row_split"]["bytes"] <= plan["row_split"]["base_bytes"]


def test_a_budget_below_the_base_plan_raises_fewer_matrices():
    model = tiny_model()
    spec = {"scheme": "uniform", "bits": 3, "granularity": "group", "group_size": 32, "full_range": True}
    units = [{"unit": f"decoder.{i}.{m}", "pattern": DEC.format(i, m), "params": 64 * 128,
              "quant_loss": float(1 + i + (m == "fc2"))} for i in range(2) for m in ("fc1", "fc2")]
    base = {"default": spec, "rules": [], "selection": {"units": units}}

    def size_of(plan: dict) -> int:
        return predict_packed(model, plan_from_dict({k: v for k, v in plan.items() if k != "row_split"}))["file_bytes"]

    free = row_split_plan.build(base, [0, 7], size_of, cold_bits=2, hot_bits=4, decoder_bits=3)
    lowest = size_of(row_split_plan.build(base, [0, 7], size_of, cold_bits=2, hot_bits=4, decoder_bits=3, budget=0))
    budget = lowest + 64 * 128 // 8 + 64  # room for one matrix at one more bit (codes and scales)
    tight = row_split_plan.build(base, [0, 7], size_of, cold_bits=2, hot_bits=4, decoder_bits=3, budget=budget)
    assert tight["row_split"]["base_bytes"] == budget and tight["row_split"]["bytes"] <= budget
    assert tight["row_split"]["raised"] == ["decoder.1.fc2"]  # the most output change per weight first
    assert len(free["row_split"]["raised"]) == 4


def test_common_word_rows_hold_each_word_as_the_text_has_it():
    from tests.conftest import tiny_processor_obj

    tok = tiny_processor_obj().tokenizer
    en = row_split_plan.common_word_rows(tok, "en", 200)
    the = tok.encode(" the", add_special_tokens=False) + tok.encode(" The", add_special_tokens=False)
    assert set(the) <= en and tok.encode("the", add_special_tokens=False)[0] not in en
    assert en < row_split_plan.common_word_rows(tok, "en", 1000) and max(en) < 50257
    ja = row_split_plan.common_word_rows(tok, "ja", 200)  # no spaces in Japanese text
    assert set(tok.encode("です", add_special_tokens=False)) <= ja


def test_plan_for_gathers_transcript_first_and_word_rows_and_fits_the_ratio(fixture_manifest):
    from types import SimpleNamespace

    from tests.conftest import tiny_processor_obj
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.quant.rows import token_rows

    model, processor = tiny_model(), tiny_processor_obj()
    teacher = SimpleNamespace(model=model, processor=processor, params=sum(p.numel() for p in model.parameters()))
    units = [{"unit": f"decoder.{i}.{m}", "pattern": DEC.format(i, m), "params": 64 * 128, "quant_loss": 1.0 + i}
             for i in range(2) for m in ("fc1", "fc2")]
    base = {"default": {"scheme": "uniform", "bits": 3, "granularity": "group", "group_size": 32},
            "rules": [], "selection": {"units": units}}
    plain = row_split_plan.plan_for(teacher, base, fixture_manifest)
    transcripts = set(token_rows(processor.tokenizer, load_dataset(fixture_manifest, check_audio=False).utterances))
    assert set(plain["rows"][0]["rows"]) == transcripts and "row_split" not in plain
    words = row_split_plan.plan_for(teacher, base, fixture_manifest, words={"en": 300}, first_tokens=100)
    got = set(words["rows"][0]["rows"])
    assert got == transcripts | set(range(100)) | row_split_plan.common_word_rows(processor.tokenizer, "en", 300)
    # --ratio: the budget is 4 bytes a parameter over the ratio, and the plan keeps within it.
    lowest = row_split_plan.plan_for(teacher, base, fixture_manifest, ratio=1e12)["selection"]["row_split"]
    assert lowest["raised"] == [] and lowest["base_bytes"] == 0
    ratio = 4 * teacher.params / (lowest["bytes"] + 1500)  # room for one 4-bit raise (~1 kB) and not two
    info = row_split_plan.plan_for(teacher, base, fixture_manifest, ratio=ratio)["selection"]["row_split"]
    assert info["base_bytes"] == int(4 * teacher.params / ratio) and info["bytes"] <= info["base_bytes"]
    assert info["raised"] == ["decoder.1.fc1"]
