"""export: transformers and CTranslate2 directories that their runtimes load, checked after writing."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from whisper_kdq.cli import app
from whisper_kdq.errors import UserError
from whisper_kdq.export import export_model
from whisper_kdq.models.refs import load_model

runner = CliRunner()


def test_hf_export_loads_offline_with_transformers(tiny_model_dir, tmp_path):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    result = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--format", "hf",
                                 "--out", str(tmp_path / "hf"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["max_logit_diff"] == 0.0
    for name in ("config.json", "generation_config.json", "preprocessor_config.json", "tokenizer.json", "model.safetensors"):
        assert (tmp_path / "hf" / name).is_file(), name
    model = WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf", local_files_only=True)
    processor = WhisperProcessor.from_pretrained(tmp_path / "hf", local_files_only=True)
    assert processor.feature_extractor.feature_size == model.config.num_mel_bins
    assert model.generation_config.lang_to_id["<|ja|>"] == 50266
    # Never overwrite without --force.
    again = runner.invoke(app, ["export", "--model", str(tiny_model_dir), "--format", "hf", "--out", str(tmp_path / "hf")])
    assert again.exit_code == 2 and "--force" in again.output


def test_ct2_export_runs_in_ctranslate2_and_faster_whisper(tiny_model_dir, tmp_path, fixture_manifest):
    import ctranslate2
    import faster_whisper
    loaded = load_model(str(tiny_model_dir))
    result = export_model(loaded, "ct2", tmp_path / "ct2")
    assert result.precision == "float16" and "not quantized" in result.reason
    engine = ctranslate2.models.Whisper(str(tmp_path / "ct2"), device="cpu")
    assert engine.is_multilingual and engine.n_mels == 80
    fw = faster_whisper.WhisperModel(str(tmp_path / "ct2"), device="cpu", compute_type="float32")
    clip = json.loads(fixture_manifest.read_text(encoding="utf-8").splitlines()[0])["audio"]
    segments, info = fw.transcribe(str(fixture_manifest.parent / clip), language="ja", beam_size=1)
    list(segments)  # decoding runs end to end (a random model's words are meaningless)
    assert info.language == "ja"
    # The export decodes with the CTranslate2 engine through evaluate; a bad compute type is one line.
    ok = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "ct2"), "--data", str(fixture_manifest), "--limit", "2",
                             "--engine", "ctranslate2", "--compute-type", "float32", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["models"][0]["engine"] == "ctranslate2"
    bad = runner.invoke(app, ["evaluate", "--model", str(tmp_path / "ct2"), "--data", str(fixture_manifest),
                              "--engine", "ctranslate2", "--compute-type", "bogus"])
    assert bad.exit_code == 2 and "compute type" in bad.output and "Traceback" not in bad.output
    # Importing the export back gives the same logits within float16 precision.
    back = load_model(str(tmp_path / "ct2")).model
    features = torch.randn(1, 80, 3000)
    prompt = torch.tensor([[50258, 50266, 50359, 50363]])
    with torch.no_grad():
        a = loaded.model(input_features=features, decoder_input_ids=prompt).logits
        b = back(input_features=features, decoder_input_ids=prompt).logits
    assert torch.allclose(a, b, atol=1e-2 * a.abs().max().item())


def test_unknown_format_is_a_user_error(tiny_model_dir, tmp_path):
    with pytest.raises(UserError, match="unknown export format"):
        export_model(load_model(str(tiny_model_dir)), "onnx", tmp_path / "x")


def test_int8_ct2_export_of_a_4_bit_checkpoint_is_allowed_and_called_lossy(tiny_model_dir, tmp_path):
    packed = tmp_path / "q4.safetensors"
    assert runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--bits", "4", "--out", str(packed)]).exit_code == 0
    auto = export_model(load_model(str(packed)), "ct2", tmp_path / "auto")
    assert auto.precision == "float16" and "cannot represent exactly" in auto.reason
    result = runner.invoke(app, ["export", "--model", str(packed), "--format", "ct2", "--ct2-quantization", "int8",
                                 "--out", str(tmp_path / "int8"), "--json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["precision"] == "int8" and "lossy" in info["reason"] and info["max_logit_diff"] > 0
    assert info["size_bytes"] < auto.size_bytes * 0.7  # int8 codes against float16 weights


def test_full_range_8_bit_codes_are_not_ctranslate2_int8(tiny_model_dir, tmp_path):
    """CTranslate2 int8 is the restricted grid: a full-range 8-bit file cannot map onto it code for code."""
    from whisper_kdq.export import ct2_precision

    for flags, precision in (([], "int8"), (["--full-range"], "float16")):
        packed = tmp_path / f"q8{len(flags)}.safetensors"
        result = runner.invoke(app, ["quantize", "--model", str(tiny_model_dir), "--bits", "8",
                                     "--out", str(packed), *flags])
        assert result.exit_code == 0, result.output
        assert ct2_precision(load_model(str(packed)))[0] == precision


def test_a_model_trained_on_short_windows_says_so_when_exported_for_ctranslate2(tmp_path):
    """The trained window rides along in a transformers export; a CTranslate2 export, which has no place for it,
    gets a note (faster-whisper reads 30 s) and the JSON names it."""
    from tests.conftest import tiny_model, tiny_processor_obj
    from whisper_kdq.evaluate.window import record_trained_window, trained_window

    src = tmp_path / "src"
    model = tiny_model()
    record_trained_window(model, 10)
    model.save_pretrained(src)
    tiny_processor_obj().save_pretrained(src)
    hf = runner.invoke(app, ["export", "--model", str(src), "--format", "hf", "--out", str(tmp_path / "hf"), "--json"])
    assert hf.exit_code == 0, hf.output
    assert trained_window(load_model(str(tmp_path / "hf")).model) == 10.0 and "note:" not in hf.stderr
    ct2 = runner.invoke(app, ["export", "--model", str(src), "--format", "ct2", "--out", str(tmp_path / "ct2"), "--json"])
    assert ct2.exit_code == 0, ct2.output
    assert json.loads(ct2.stdout)["trained_window_s"] == 10.0 and "trained on 10-s windows" in ct2.stderr
