"""A shorter audio window (evaluate/window.py): the encoder keeps its first positions, and is restored."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import tiny_model
from whisper_kdq.cli import app
from whisper_kdq.data.manifest import Utterance
from whisper_kdq.errors import UserError
from whisper_kdq.evaluate.decode import transcribe
from whisper_kdq.evaluate.window import audio_window, window_name, window_or_none, window_positions, windowed_extractor

runner = CliRunner()


def test_window_positions_and_refusals():
    assert window_positions(10) == 500 and window_positions(30) == 1500 and window_positions(2.5) == 125
    for seconds in (0, -1, 30.5):
        with pytest.raises(UserError, match="between 0 and 30"):
            window_positions(seconds)
    with pytest.raises(UserError, match="longest clip is 3.0 s"):
        window_positions(2, [np.zeros(16000), np.zeros(48000)])
    # The window is padded in whole 20-ms positions: 1.001 s is 50 positions, which a 1.001-s clip overflows.
    with pytest.raises(UserError, match="longest clip"):
        window_positions(1.001, [np.zeros(16016)])
    assert window_positions(1.001, [np.zeros(16000)]) == 50


def test_how_runs_record_and_name_a_window():
    # 30 s is Whisper's own window, recorded as no window, so a file from a run without one matches it.
    assert window_or_none(None) is None and window_or_none(30) is None and window_or_none(10) == 10.0
    assert window_name(None) == "Whisper's 30-s window" and window_name(2.5) == "a 2.5-s window"


def test_a_trained_window_survives_packing_and_evaluate_reports_it(tmp_path, fixture_manifest):
    """The window a model trained on rides in its generation config: through a packed checkpoint, into
    `evaluate --json`, and a note when it decodes another window."""
    from tests.conftest import tiny_processor_obj
    from whisper_kdq.evaluate.window import record_trained_window, trained_window
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.quant.checkpoint import save_packed
    from whisper_kdq.quant.plan import plan_from_options

    model = tiny_model()
    assert trained_window(model) is None
    record_trained_window(model, 3)
    out = tmp_path / "m.safetensors"
    save_packed(out, model, tiny_processor_obj(), plan_from_options(bits=4))
    assert trained_window(load_model(str(out)).model) == 3.0
    args = ["evaluate", "--model", str(out), "--data", str(fixture_manifest), "--limit", "2", "--device", "cpu", "--json"]
    at_30 = runner.invoke(app, args)
    assert at_30.exit_code == 0, at_30.output
    assert json.loads(at_30.stdout)["models"][0]["trained_window_s"] == 3.0
    assert "trained on 3-s windows" in at_30.stderr and "--window 3" in at_30.stderr
    at_3 = runner.invoke(app, [*args, "--window", "3"])
    assert at_3.exit_code == 0 and "trained on" not in at_3.stderr
    record_trained_window(model, None)
    assert trained_window(model) is None


def test_windowed_extractor_pads_to_the_window_and_leaves_the_original(tiny_processor):
    original = tiny_processor.feature_extractor
    short = windowed_extractor(original, 4)
    features = short(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="np").input_features
    assert features.shape == (1, 80, 400)
    assert original(np.zeros(16000, np.float32), sampling_rate=16000, return_tensors="np").input_features.shape[-1] == 3000


def test_audio_window_uses_the_first_positions_and_restores_the_model():
    model = tiny_model()
    encoder = model.get_encoder()
    table = encoder.embed_positions
    with audio_window(model, 2):
        assert torch.equal(encoder.embed_positions.weight, table.weight[:100])
        out = encoder(torch.randn(1, 80, 200)).last_hidden_state
        assert out.shape == (1, 100, model.config.d_model)
        with pytest.raises(ValueError):
            encoder(torch.randn(1, 80, 3000))  # the full window is refused inside the block
    assert encoder.embed_positions is table and model.config.max_source_positions == 1500
    assert encoder(torch.randn(1, 80, 3000)).last_hidden_state.shape[1] == 1500
    with pytest.raises(RuntimeError), audio_window(model, 2):
        raise RuntimeError("a failure inside the block")
    assert encoder.embed_positions is table and model.config.max_source_positions == 1500


def test_transcribe_in_a_window_and_a_clip_that_does_not_fit(tiny_processor):
    model = tiny_model()
    clips = [Utterance(id=f"c{i}", text="x", language="ja", samples=np.random.default_rng(i).normal(0, 0.1, n).astype(np.float32))
             for i, n in enumerate((16000, 24000))]
    out = transcribe(model, tiny_processor, clips, window_s=2)
    assert len(out.hypotheses) == 2 and model.config.max_source_positions == 1500
    with pytest.raises(UserError, match="longest clip is 1.5 s"):
        transcribe(model, tiny_processor, clips, window_s=1)


@pytest.mark.integration
def test_real_whisper_base_reads_a_short_window_in_both_engines(fixture_manifest):
    for engine in ("transformers", "ctranslate2"):
        result = runner.invoke(app, ["evaluate", "--model", "base", "--data", str(fixture_manifest), "--window", "8",
                                     "--engine", engine, "--json", "--device", "cpu"])
        assert result.exit_code == 0, result.output
        (model,) = json.loads(result.stdout)["models"]
        assert model["decoding"]["window_s"] == 8
        assert model["languages"]["ja"]["cer"] < 0.35 and model["languages"]["en"]["wer"] < 0.35, (engine, model)
    bad = runner.invoke(app, ["evaluate", "--model", "base", "--data", str(fixture_manifest), "--window", "1"])
    assert bad.exit_code != 0 and "longest clip" in bad.output and "Traceback" not in bad.output
