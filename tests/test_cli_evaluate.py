"""`whisper-kdq evaluate` as users and CI pipelines run it: JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import shutil

import pytest
from typer.testing import CliRunner

from whisper_kdq.cli import app

runner = CliRunner()


def _run(*args):
    return runner.invoke(app, list(args))


def _manifest(tmp_path, rows):
    path = tmp_path / "m.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n", encoding="utf-8")
    return path


def _clip(tmp_path, fixture_manifest, name="a.flac"):
    first = json.loads(fixture_manifest.read_text(encoding="utf-8").splitlines()[0])
    shutil.copyfile(fixture_manifest.parent / first["audio"], tmp_path / name)
    return name


def test_json_schema_on_tiny_model(tiny_model_dir, fixture_manifest, tmp_path):
    preds = tmp_path / "preds.jsonl"
    result = _run("evaluate", "--model", str(tiny_model_dir), "--data", str(fixture_manifest), "--json",
                  "--device", "cpu", "--predictions", str(preds))
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    (model,) = out["models"]
    assert model["params"] > 0 and model["size_bytes"] > 0 and model["rtf"] > 0
    assert set(model["languages"]) == {"ja", "en"}
    assert model["decoding"] == {"beam_size": 1, "fallback": False, "window_s": 30.0}
    for stats in model["languages"].values():
        assert {"wer", "cer", "n"} <= set(stats) and stats["n"] >= 1
    lines = [json.loads(x) for x in preds.read_text(encoding="utf-8").splitlines()]
    assert len(lines) == out["n"] and {"reference", "hypothesis"} <= set(lines[0])
    # An existing predictions file is not overwritten without --force.
    again = _run("evaluate", "--model", str(tiny_model_dir), "--data", str(fixture_manifest), "--predictions", str(preds))
    assert again.exit_code != 0 and "--force" in again.output


def test_language_option_keeps_one_language(tiny_model_dir, fixture_manifest):
    result = _run("evaluate", "--model", str(tiny_model_dir), "--data", str(fixture_manifest), "--language", "en",
                  "--split", "test", "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n"] == 3 and out["language"] == "en" and set(out["models"][0]["languages"]) == {"en"}
    bad = _run("evaluate", "--model", str(tiny_model_dir), "--data", str(fixture_manifest), "--language", "jp")
    assert bad.exit_code == 2 and "unknown language code 'jp'" in bad.output and "Traceback" not in bad.output


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"audio": "a.flac", "text": ""}], "m.jsonl:1: missing or empty text"),
        ([{"audio": "a.flac", "text": "hi", "language": "xx"}], "m.jsonl:1: unknown language code"),
        ([{"audio": "a.flac", "text": "hi"}, {"audio": "nope.flac", "text": "x"}], "m.jsonl:2: audio file not found"),
    ],
)
def test_bad_manifest_rows_name_the_line(tiny_model_dir, fixture_manifest, tmp_path, rows, message):
    _clip(tmp_path, fixture_manifest)
    result = _run("evaluate", "--model", str(tiny_model_dir), "--data", str(_manifest(tmp_path, rows)))
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) <= 2  # one line (may wrap once)


def test_skip_bad_counts_the_skipped_rows(tiny_model_dir, fixture_manifest, tmp_path):
    _clip(tmp_path, fixture_manifest)
    (tmp_path / "bad.flac").write_bytes(b"not audio at all")
    rows = [{"audio": "a.flac", "text": "hi", "language": "ja"}, {"audio": "bad.flac", "text": "x"}, {"text": "y"}]
    result = _run("evaluate", "--model", str(tiny_model_dir), "--data", str(_manifest(tmp_path, rows)),
                  "--skip-bad", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["n"] == 1 and len(out["skipped"]) == 2
    assert any("m.jsonl:2" in s and "cannot decode" in s for s in out["skipped"])


def test_missing_model_and_data_are_user_errors(tiny_model_dir, tmp_path):
    result = _run("evaluate", "--model", str(tmp_path / "missing"), "--data", str(tmp_path / "none.jsonl"))
    assert result.exit_code == 2 and "not found" in result.output


@pytest.mark.integration
def test_whisper_base_on_synthesized_speech(small_corpus):
    """Real whisper-base on ~10 synthesized clips: a broken import would not reach these error rates."""
    result = _run("evaluate", "--model", "base", "--data", str(small_corpus / "manifest.jsonl"), "--json")
    assert result.exit_code == 0, result.output
    (model,) = json.loads(result.stdout)["models"]
    assert model["languages"]["ja"]["cer"] < 0.40
    assert model["languages"]["en"]["wer"] < 0.45
    assert model["size_bytes"] == 145_217_532


def test_two_models_side_by_side_with_a_paired_interval(tiny_model_dir, fixture_manifest):
    """A second --model is compared with the first on the same clips: the change of each language's headline
    rate and its 95 % paired-bootstrap interval, in the JSON and the table."""
    args = ("evaluate", "--model", str(tiny_model_dir), "--model", str(tiny_model_dir), "--data", str(fixture_manifest),
            "--device", "cpu")
    out = json.loads(_run(*args, "--json").stdout)
    first, second = out["models"]
    assert "versus_first" not in first and set(second["versus_first"]) == {"en", "ja"}
    ja = second["versus_first"]["ja"]
    assert ja["metric"] == "cer" and ja["base"] == first["languages"]["ja"]["cer"] and ja["n"] == first["languages"]["ja"]["n"]
    assert ja["relative"] == 0 and ja["ci95"] == [0, 0]  # the same model decodes the same: no change at all
    from rich.console import Console

    from whisper_kdq.cli.evaluate import comparison_table

    console = Console(width=250, record=True)
    console.print(comparison_table(out["models"]))
    text = console.export_text()
    assert "ja CER vs first (95 % CI)" in text and "en WER vs first (95 % CI)" in text and "+0.0 % [+0.0, +0.0]" in text


@pytest.mark.integration
def test_whisper_base_against_its_2_bit_copy_is_worse_beyond_noise(small_corpus, tmp_path):
    """Real whisper-base and its 2-bit RTN copy (which cannot transcribe) on synthesized speech: the copy's CER
    ja is higher and the paired interval says so (it lies above zero)."""
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.quant.checkpoint import save_packed
    from whisper_kdq.quant.plan import plan_from_options

    base = load_model("base")
    save_packed(tmp_path / "q2.safetensors", base.model, base.processor, plan_from_options(bits=2))
    result = _run("evaluate", "--model", "base", "--model", str(tmp_path / "q2.safetensors"), "--data",
                  str(small_corpus / "manifest.jsonl"), "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)["models"]
    ja = second["versus_first"]["ja"]
    assert ja["other"] == second["languages"]["ja"]["cer"] and ja["base"] == first["languages"]["ja"]["cer"]
    assert ja["relative"] > 0 and ja["ci95"][0] > 0 and ja["ci95"][0] <= ja["relative"] <= ja["ci95"][1]
