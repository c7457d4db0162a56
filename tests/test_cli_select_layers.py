"""`whisper-kdq select-layers`: a plan that `quantize --plan` takes, on a tiny model and on real whisper-base."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from whisper_kdq.cli import app

runner = CliRunner()


def test_plan_feeds_quantize_and_predicts_its_size(tiny_model_dir, fixture_manifest, tmp_path):
    plan = tmp_path / "plan.json"
    result = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                                 "--teacher", str(tiny_model_dir), "--low-fraction", "0.5", "--out", str(plan),
                                 "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    selection = json.loads(result.stdout)["selection"]
    bits = [u["bits"] for u in selection["units"]]
    assert bits.count(3) == round(0.5 * len(bits)) and set(bits) == {3, 4}
    assert all(u["distill_loss"] == 0 for u in selection["units"] if u["unit"].startswith(("encoder", "decoder")))
    ckpt = tmp_path / "q.safetensors"
    result = runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--plan", str(plan), "--out", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    assert ckpt.stat().st_size == selection["predicted_bytes"]
    again = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                                "--out", str(plan)])
    assert again.exit_code == 2 and "--force" in again.output
    full = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                               "--low-fraction", "0.5", "--full-range", "--out", str(plan), "--force", "--device", "cpu"])
    assert full.exit_code == 0, full.output
    written = json.loads(plan.read_text())
    assert written["default"]["full_range"] is True and all(r["full_range"] for r in written["rules"] if "bits" in r)


def test_bad_options_are_one_line_errors(tiny_model_dir, fixture_manifest):
    result = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                                 "--granularity", "neuron"])
    assert result.exit_code == 2 and "unknown granularity" in result.output
    result = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                                 "--low-bits", "4", "--high-bits", "3"])
    assert result.exit_code == 2 and "--high-bits" in result.output
    result = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                                 "--strategy", "magic"])
    assert result.exit_code == 2 and "unknown selection strategy" in result.output


@pytest.mark.integration
def test_guided_selection_on_whisper_base_meets_its_size_target(fixture_manifest, tmp_path):
    plan = tmp_path / "plan.json"
    result = runner.invoke(app, ["select-layers", "--model", "base", "--calibration", str(fixture_manifest),
                                 "--target-ratio", "8.5", "--limit", "4", "--out", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    selection = json.loads(result.stdout)["selection"]
    assert selection["ratio_vs_fp32"] >= 8.5
    units = {u["unit"]: u for u in selection["units"]}
    assert all(u["quant_loss"] > 0 for u in units.values())
    # Lowered units are those with the least damage per weight: none lowered is worse than any kept.
    low = [u["quant_loss"] / u["params"] for u in units.values() if u["bits"] == 3]
    high = [u["quant_loss"] / u["params"] for u in units.values() if u["bits"] == 4]
    assert low and high and max(low) <= min(high)


@pytest.mark.integration
def test_per_matrix_selection_on_whisper_base_feeds_quantize(fixture_manifest, tmp_path):
    plan = tmp_path / "plan.json"
    result = runner.invoke(app, ["select-layers", "--model", "base", "--calibration", str(fixture_manifest),
                                 "--granularity", "linear", "--low-bits", "4", "--high-bits", "6", "--target-bpw", "5.0",
                                 "--limit", "2", "--out", str(plan), "--json"])
    assert result.exit_code == 0, result.output
    selection = json.loads(result.stdout)["selection"]
    units = selection["units"]
    assert len(units) == 2 + 6 * 6 + 6 * 10 and selection["granularity"] == "linear"
    low = [u["quant_loss"] / u["params"] for u in units if u["bits"] == 4]
    high = [u["quant_loss"] / u["params"] for u in units if u["bits"] == 6]
    assert low and high and max(low) <= min(high)
    ckpt = tmp_path / "q.safetensors"
    result = runner.invoke(app, ["quantize", "--model", "base", "--plan", str(plan), "--out", str(ckpt), "--json"])
    assert result.exit_code == 0, result.output
    assert ckpt.stat().st_size == selection["predicted_bytes"] <= 5.0 * 72_593_920 / 8


def test_embedding_rows_of_the_calibration_text_go_into_the_plan_and_its_size(tiny_model_dir, fixture_manifest, tmp_path):
    plan = tmp_path / "plan.json"
    result = runner.invoke(app, ["select-layers", "--model", str(tiny_model_dir), "--calibration", str(fixture_manifest),
                                 "--low-bits", "2", "--high-bits", "3", "--low-fraction", "0.5", "--embedding-rows-bits", "4",
                                 "--out", str(plan), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    written = json.loads(plan.read_text())
    (rule,) = written["rows"]
    assert rule["bits"] == 4 and "embed_tokens" in rule["pattern"] and len(rule["rows"]) > 100
    ckpt = tmp_path / "q.safetensors"
    assert runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--plan", str(plan), "--out", str(ckpt)]).exit_code == 0
    assert ckpt.stat().st_size == written["selection"]["predicted_bytes"]
