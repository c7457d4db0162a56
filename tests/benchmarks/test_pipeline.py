"""The pipeline's students: what it asks `whisper-kdq distill` for (the training window, its cache file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pipeline  # noqa: E402


def _pipeline(tmp_path: Path, *flags: str) -> tuple[pipeline.Pipeline, list[tuple[str, ...]]]:
    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True)
    rows = [{"id": f"{lang}{i}", "audio": "x.flac", "text": "t", "language": lang, "split": "train"}
            for lang in ("ja", "en") for i in range(3)]
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = pipeline.Pipeline(pipeline.parse_args(["--corpus", str(corpus), "--out", str(tmp_path / "out"), "--ja", "2",
                                               "--en", "1", *flags]))
    calls: list[tuple[str, ...]] = []
    p.cli = lambda *a: calls.append(a) or {"model": "m", "wall_s": 1.0}
    return p, calls


def test_train_window_reaches_every_student_and_its_own_teacher_cache(tmp_path):
    p, calls = _pipeline(tmp_path, "--train-window", "10")
    p.distill("student-kd", "--kd", "1")
    args = calls[-1]
    assert args[args.index("--window") + 1] == "10"
    assert args[args.index("--teacher-cache") + 1].endswith("teacher-cache-w10.pt")
    plain, calls = _pipeline(tmp_path / "plain")
    plain.distill("student-kd", "--kd", "1")
    assert "--window" not in calls[-1] and calls[-1][calls[-1].index("--teacher-cache") + 1].endswith("teacher-cache.pt")


def test_regressed_encoder_row_trains_the_decoder_on_the_encoder_file(tmp_path):
    """The 10.5x CPU row: the encoder stage's packed file is the decoder stage's student, started from its codes
    (one --qat-init even when the pipeline's default is another), and the training wall is both stages'."""
    p, calls = _pipeline(tmp_path, "--train-window", "10", "--qat-init", "gptq")
    p.evaluate = lambda model: {"model": model}
    row, wall = p._regressed_encoder_qat("r", "plan.json")
    encoder, decoder = calls
    assert "--encoder-only" in encoder and encoder[encoder.index("--frozen-encoder-layers") + 1] == "0"
    assert encoder[encoder.index("--plan") + 1] == "plan.json" and encoder[encoder.index("--window") + 1] == "10"
    assert decoder[decoder.index("--student") + 1] == "m" and "--student-decoder-layers" not in decoder
    assert decoder.count("--qat-init") == 1 and decoder[decoder.index("--qat-init") + 1] == "packed"
    assert row == {"model": "m"} and wall == 2.0


def test_full_range_copy_of_a_plan_puts_every_symmetric_uniform_spec_on_the_full_grid(tmp_path):
    from whisper_kdq.quant.plan import load_plan

    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"default": {"scheme": "uniform", "bits": 3, "symmetric": True, "granularity": "group",
                                            "group_size": 128},
                                "rules": [{"pattern": "fc1", "bits": 2}, {"pattern": "fc2", "float": True},
                                          {"pattern": "k_proj", "scheme": "apot", "bits": 3, "symmetric": False}],
                                "selection": {"strategy": "guided"}}))
    full = Path(pipeline.Pipeline._full_range(str(plan)))
    assert full.name == "plan-full.json" and json.loads(plan.read_text())["default"].get("full_range") is None
    data = json.loads(full.read_text())
    assert data["selection"] == {"strategy": "guided"}
    state = {f"m.{n}.weight": torch.zeros(4, 128) for n in ("fc1", "fc2", "k_proj", "v_proj")}
    specs = load_plan(full).resolve(state)
    assert specs["m.fc2.weight"] is None and specs["m.k_proj.weight"].full_range is False  # float; APoT leaves it
    assert (specs["m.fc1.weight"].bits, specs["m.fc1.weight"].full_range) == (2, True)  # a rule with bits keeps it
    assert (specs["m.v_proj.weight"].bits, specs["m.v_proj.weight"].full_range) == (3, True)


def test_the_10x_plan_selected_on_the_full_range_grid_is_its_own_file(tmp_path, monkeypatch):
    import gpu_study

    p, _ = _pipeline(tmp_path)
    asked = []
    monkeypatch.setattr(gpu_study, "select_plan", lambda args, want: asked.append(want))
    assert p._guided_10x_plan(full_range=True).endswith("plan-guided-linear-23-10.5x-fullsel.json")
    assert p._guided_10x_plan().endswith("plan-guided-linear-23-10.5x.json")
    assert [w["full_range"] for w in asked] == [True, False]
    assert any("selected on full range" in name for name in p.rows())


def test_row_split_row_shares_the_full_range_encoder_and_trains_the_decoder_from_its_composed_student(tmp_path):
    p, calls = _pipeline(tmp_path)
    p.evaluate = lambda model: {"model": model}
    p.out.mkdir(parents=True, exist_ok=True)
    (p.out / "r-start.safetensors").write_bytes(b"")  # composed already: no teacher to load here
    row, wall = p._row_split_qat("r", "plan-full.json", "shared")
    encoder, decoder = calls
    assert encoder[encoder.index("--out") + 1].endswith("shared-encoder") and encoder[encoder.index("--plan") + 1] == "plan-full.json"
    assert decoder[decoder.index("--student") + 1].endswith("r-start.safetensors")
    assert decoder[decoder.index("--plan") + 1].endswith("plan-r.json") and decoder[decoder.index("--out") + 1].endswith("/r")
    assert row == {"model": "m"} and wall == 2.0 and "--speed-perturb" not in decoder
    assert any("embedding rows 4/2-bit" in name for name in p.rows())
    # The speed-perturbed row: the same stages, its decoder stage on 0.9x and 1.1x copies too.
    calls.clear()
    (p.out / "s-start.safetensors").write_bytes(b"")
    p._row_split_qat("s", "plan-full.json", "shared", "--speed-perturb", "0.9,1.1")
    decoder = calls[-1]
    assert decoder[decoder.index("--speed-perturb") + 1] == "0.9,1.1" and decoder[decoder.index("--out") + 1].endswith("/s")
    assert any("speed-perturbed" in name for name in p.rows())
    assert any("common English words" in name for name in p.rows())


def test_every_evaluation_keeps_its_predictions_for_the_report(tmp_path):
    p, calls = _pipeline(tmp_path)
    p.cli = lambda *a: calls.append(a) or {"models": [{"size_bytes": 1, "params": 1, "rtf": 0.1, "languages": {
        "ja": {"cer": 0.1}, "en": {"wer": 0.2}}}]}
    row = p.evaluate(str(tmp_path / "runs" / "x" / "model.safetensors"))
    args = calls[-1]
    assert args[args.index("--predictions") + 1] == row["predictions"] and "--force" in args
    assert Path(row["predictions"]).parent == p.out / "predictions" and row["predictions"].endswith("model.safetensors-transformers.jsonl")


def test_encoder_at_30s_row_goes_on_from_the_stage_1_encoder_and_swaps_it_into_the_row_s_student(tmp_path, monkeypatch):
    import swap_encoder

    p, calls = _pipeline(tmp_path)
    p.evaluate = lambda model: {"model": model}
    with_30s = next(name for name in p.rows() if "encoder continued at 30 s" in name)
    assert "common English words" in with_30s
    missing = None
    try:
        p._encoder_at_30s("r", "shared", "plan-full.json")
    except SystemExit as exc:
        missing = str(exc)
    assert missing and "run the row that trains r first" in missing and not calls
    (p.out / "r").mkdir(parents=True)
    (p.out / "r" / "model.safetensors").write_bytes(b"")
    (p.out / "r" / "summary.json").write_text(json.dumps({"wall_s": 5.0}))
    (p.out / "plan-r.json").write_text(json.dumps({"default": None}))
    swapped = []
    monkeypatch.setattr(swap_encoder, "swap_encoder", lambda *a: swapped.append(a))
    row, wall = p._encoder_at_30s("r", "shared", "plan-full.json")
    first, more = calls
    assert first[first.index("--out") + 1].endswith("shared-encoder") and "--window" not in more
    assert more[more.index("--student") + 1] == "m" and more[more.index("--qat-init") + 1] == "packed"
    assert more[more.index("--out") + 1].endswith("shared-encoder-w30") and more[more.index("--plan") + 1] == "plan-full.json"
    assert swapped[0][0] == p.out / "r" / "model.safetensors" and swapped[0][1] == Path("m")
    assert row == {"model": str(p.out / "r-enc30.safetensors")} and wall == 7.0


def test_results_record_the_test_split_size_as_evaluated(tmp_path):
    p, _ = _pipeline(tmp_path)
    rows = [{"id": f"{lang}t{i}", "audio": "x.flac", "text": "t", "language": lang, "split": "test"}
            for lang, n in (("en", 2), ("ja", 3)) for i in range(n)]
    with p.manifest.open("a") as f:
        f.write("".join(json.dumps(r) + "\n" for r in rows))
    assert p._test_clips() == {"en": 2, "ja": 3}
    p.a.test_limit = 3  # `evaluate --limit 3` keeps the split's first three rows
    assert p._test_clips() == {"en": 2, "ja": 1}
    p.results = {}
    p.save()
    assert json.loads((p.out / "results.json").read_text())["meta"]["test_clips"] == {"en": 2, "ja": 1}
