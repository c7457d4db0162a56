"""`whisper-kdq distill --window S`: training on short audio windows (tiny models; real whisper-base)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from tests.test_cli_distill import _args
from whisper_kdq.cli import app

runner = CliRunner()


def test_window_training_reads_short_windows_and_saves_a_whole_model(tiny_model_dir, fixture_manifest, tmp_path):
    run, cache = tmp_path / "w3", tmp_path / "teacher.pt"
    # The student starts as the teacher itself: if both read the same 3-s window their logits agree.
    common = ["--student", str(tiny_model_dir), "--window", "3", "--teacher-cache", str(cache), "--json"]
    args = _args(tiny_model_dir, fixture_manifest, tmp_path / "same")
    cut = args.index("--student-decoder-layers")
    del args[cut:cut + 2]
    first = runner.invoke(app, [*args, *common, "--steps", "1", "--lr", "1e-12", "--hidden", "0", "--ce", "0"])
    assert first.exit_code == 0, first.output
    kd = [json.loads(x)["kd"] for x in (tmp_path / "same" / "metrics.jsonl").read_text().splitlines() if "kd" in x]
    assert kd[0] < 1e-5, kd
    assert torch.load(cache, weights_only=False)["window_s"] == 3.0
    result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, run), "--window", "3", "--steps", "3",
                                 "--save-every", "2", "--student-encoder-layers", "1", "--json"])
    assert result.exit_code == 0, result.output
    from whisper_kdq.distill.checkpointing import latest_checkpoint, load_checkpoint

    positions = "model.encoder.embed_positions.weight"
    state = load_checkpoint(latest_checkpoint(run))["model"]
    start, end = load_file(tiny_model_dir / "model.safetensors"), load_file(run / "model" / "model.safetensors")
    assert state[positions].shape == end[positions].shape == (1500, 64)  # the whole table, not the window's
    assert torch.equal(end[positions], start[positions])
    assert json.loads((run / "model" / "config.json").read_text())["max_source_positions"] == 1500
    assert json.loads((run / "model" / "generation_config.json").read_text())["whisper_kdq_trained_window_s"] == 3.0
    assert not torch.equal(start["model.encoder.layers.1.fc1.weight"], end["model.encoder.layers.0.fc1.weight"])
    # The cache file of the 3-s run is refused by a 30-s run, in one line.
    other = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / "w30"), "--steps", "1",
                                "--teacher-cache", str(cache)])
    assert other.exit_code == 2 and "3-s window" in other.output and "Traceback" not in other.output


def test_window_errors_are_one_line(tiny_model_dir, fixture_manifest, tmp_path):
    for window, message in (("40", "between 0 and 30"), ("1", "longest clip is 2.3 s")):
        result = runner.invoke(app, [*_args(tiny_model_dir, fixture_manifest, tmp_path / window), "--window", window,
                                     "--steps", "1"])
        assert result.exit_code == 2 and message in result.output, result.output


@pytest.mark.integration
def test_window_distillation_of_whisper_base(fixture_manifest, tmp_path):
    """Real whisper-base and real speech at a 10-s window: the student starting as the teacher agrees
    with it, and the trained student transcribes at the window it trained on."""
    run = tmp_path / "run"
    result = runner.invoke(app, ["distill", "--teacher", "base", "--student", "base", "--data", str(fixture_manifest),
                                 "--out", str(run), "--window", "10", "--freeze-embedding", "--ce", "0.3",
                                 "--steps", "2", "--batch-size", "3", "--lr", "1e-5", "--warmup", "1", "--json",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if '"kd"' in x]
    assert rows[0]["kd"] < 1e-3, rows[0]  # the same model reading the same window
    ev = runner.invoke(app, ["evaluate", "--model", str(run / "model"), "--data", str(fixture_manifest),
                             "--window", "10", "--json"])
    assert ev.exit_code == 0, ev.output
    langs = json.loads(ev.stdout)["models"][0]["languages"]
    assert langs["ja"]["cer"] < 0.3 and langs["en"]["wer"] < 0.3, langs
