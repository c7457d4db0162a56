"""CTranslate2 import: a model converted by CTranslate2's own converter comes back with the same logits."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from tests.conftest import base_package_dir
from whisper_kdq.errors import CheckpointError, UserError
from whisper_kdq.models.ct2 import load_ct2_dir, read_ct2_variables
from whisper_kdq.models.refs import load_model

import ctranslate2  # a test dependency, installed by the setup: a missing install fails, never skips


def _convert(hf_dir, out_dir, quantization):
    from ctranslate2.converters import TransformersConverter

    TransformersConverter(str(hf_dir), copy_files=["tokenizer.json"]).convert(str(out_dir), quantization=quantization)
    shutil.copyfile(base_package_dir() / "config.json", out_dir / "config.json")
    return out_dir


def _logits(model, features, prompt):
    with torch.no_grad():
        return model(input_features=features, decoder_input_ids=prompt).logits


@pytest.mark.parametrize("quantization,tolerance", [("float32", 1e-5), ("float16", 2e-2), ("bfloat16", 0.1), ("int8", 0.15)])
def test_import_matches_original(tiny_model_dir, tmp_path, quantization, tolerance):
    from transformers import WhisperForConditionalGeneration

    original = WhisperForConditionalGeneration.from_pretrained(tiny_model_dir).eval()
    ct2_dir = _convert(tiny_model_dir, tmp_path / "ct2", quantization)
    imported, processor = load_ct2_dir(ct2_dir)
    assert imported.config.d_model == 64 and imported.config.decoder_layers == 2
    # The output projection is tied to the token embedding, as in the original.
    assert imported.proj_out.weight.data_ptr() == imported.model.decoder.embed_tokens.weight.data_ptr()
    features = torch.randn(1, 80, 3000)
    prompt = torch.tensor([[50258, 50266, 50359, 50363, 1000, 2000]])
    a, b = _logits(original, features, prompt), _logits(imported, features, prompt)
    assert torch.allclose(a, b, atol=tolerance * a.abs().max().item()), (a - b).abs().max()
    gen = imported.generation_config
    assert gen.lang_to_id["<|ja|>"] == 50266 and gen.task_to_id["transcribe"] == 50359
    assert gen.alignment_heads and gen.suppress_tokens and gen.begin_suppress_tokens == [220, 50257]


def test_truncated_model_bin_is_a_clear_error(tiny_model_dir, tmp_path):
    ct2_dir = _convert(tiny_model_dir, tmp_path / "ct2", "float32")
    data = (ct2_dir / "model.bin").read_bytes()
    (ct2_dir / "model.bin").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        read_ct2_variables([ct2_dir / "model.bin"])


def test_missing_tokenizer_is_a_user_error(tiny_model_dir, tmp_path):
    ct2_dir = _convert(tiny_model_dir, tmp_path / "ct2", "float32")
    (ct2_dir / "tokenizer.json").unlink()
    with pytest.raises(UserError, match="tokenizer.json"):
        load_model(str(ct2_dir))


def test_refs_resolve_directories_and_report_size(tiny_model_dir, tmp_path):
    loaded = load_model(str(tiny_model_dir))
    assert loaded.kind == "transformers" and loaded.size_bytes > 0
    ct2 = load_model(str(_convert(tiny_model_dir, tmp_path / "ct2", "int8")))
    assert ct2.kind == "ctranslate2"
    assert ct2.size_bytes == (tmp_path / "ct2" / "model.bin").stat().st_size
    assert ct2.size_bytes < loaded.size_bytes / 2  # int8 codes vs float32 weights


def test_unknown_references_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="does not exist"):
        load_model("./no/such/model")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a transformers directory"):
        load_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="Offline alternatives"):
        load_model("someone/not-cached-here")


@pytest.mark.integration
def test_real_whisper_base_import_transcribes_like_ctranslate2(ja_clip):
    """The imported whisper-base decodes a Japanese sentence token for token as the CTranslate2 engine."""
    loaded = load_model("base")
    assert loaded.params == 72_593_920
    features = loaded.processor.feature_extractor(ja_clip, sampling_rate=16000, return_tensors="np").input_features
    ours = loaded.model.generate(torch.from_numpy(features), language="ja", task="transcribe")
    engine = ctranslate2.models.Whisper(str(loaded.path), device="cpu", compute_type="float32")
    prompt = loaded.processor.tokenizer.convert_tokens_to_ids(
        ["<|startoftranscript|>", "<|ja|>", "<|transcribe|>", "<|notimestamps|>"])
    theirs = engine.generate(ctranslate2.StorageView.from_array(np.ascontiguousarray(features)), [prompt], beam_size=1)
    ours_ids = [t for t in ours[0].tolist() if t < 50257]
    assert ours_ids == theirs[0].sequences_ids[0]
    text = loaded.processor.tokenizer.decode(ours_ids)
    assert "天気" in text  # the clip says 東京の天気は晴れです
