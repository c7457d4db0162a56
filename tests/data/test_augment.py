"""Speed perturbation (data.augment): copies of clips played faster or slower, for more voices."""

from __future__ import annotations

import numpy as np
import pytest

from whisper_kdq.data.audio import SAMPLE_RATE
from whisper_kdq.data.augment import copy_id, parse_factors, speed_perturb, with_speed_copies
from whisper_kdq.data.manifest import Dataset, Utterance, load_dataset
from whisper_kdq.errors import UserError


def _peak_hz(x: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.argmax(spectrum) * SAMPLE_RATE / len(x))


@pytest.mark.parametrize("factor", [0.9, 1.1])
def test_speed_perturb_moves_length_and_pitch_by_the_factor(factor):
    t = np.arange(2 * SAMPLE_RATE) / SAMPLE_RATE
    tone = np.sin(2 * np.pi * 440 * t).astype(np.float32)
    out = speed_perturb(tone, factor)
    assert out.dtype == np.float32 and abs(len(out) - len(tone) / factor) <= 2
    assert abs(_peak_hz(out) - 440 * factor) < 2, _peak_hz(out)
    assert speed_perturb(tone, 1.0) is tone


def test_parse_factors_and_its_one_line_errors():
    assert parse_factors("1.1, 0.9,1.1") == [0.9, 1.1]
    for bad in ("", "fast", "1.0", "0.9,3"):
        with pytest.raises(UserError, match="--speed-perturb"):
            parse_factors(bad)


def test_copies_load_perturbed_and_leave_out_what_outgrows_the_window(fixture_manifest):
    data = load_dataset(fixture_manifest)
    seconds = {u.id: len(u.load()) / SAMPLE_RATE for u in data.utterances}
    window = sorted(seconds.values())[len(seconds) // 2] / 0.9  # about half the clips fit at 0.9
    out = with_speed_copies(data, [0.9, 1.1], window)
    ids = {u.id for u in out.utterances}
    for uid, s in seconds.items():
        assert uid in ids and copy_id(uid, 1.1) in ids  # faster copies are shorter: always kept
        assert (copy_id(uid, 0.9) in ids) == (s / 0.9 <= window)
    original = data.utterances[0]
    copy = next(u for u in out.utterances if u.id == copy_id(original.id, 1.1))
    assert copy.text == original.text and copy.language == original.language and "speed 1.1" in copy.source
    assert np.array_equal(copy.load(), speed_perturb(original.load(), 1.1))


def test_copies_of_in_memory_clips():
    clip = Utterance("a", "x", "en", samples=np.zeros(SAMPLE_RATE, dtype=np.float32))
    out = with_speed_copies(Dataset([clip]), [0.5])
    assert [u.id for u in out.utterances] == ["a", copy_id("a", 0.5)] and len(out.utterances[1].load()) == 2 * SAMPLE_RATE


@pytest.mark.integration
def test_whisper_base_still_reads_speed_perturbed_real_speech(fixture_manifest):
    """Real whisper-base, real kokoro speech: the copies are still speech to the teacher (what training on them
    needs), and they are other audio: the teacher's encoder output moves."""
    import torch

    from whisper_kdq.distill.data import FeatureMemo
    from whisper_kdq.evaluate import evaluate_model
    from whisper_kdq.models.refs import load_model

    teacher = load_model("base")
    ja = load_dataset(fixture_manifest)
    ja = Dataset([u for u in ja.utterances if u.language == "ja"])
    copies = with_speed_copies(ja, [0.9, 1.1])
    for factor in (0.9, 1.1):
        subset = Dataset([u for u in copies.utterances if u.id.endswith(f"speed{factor:g}")])
        assert len(subset.utterances) == 3
        cer = evaluate_model(teacher, subset)["languages"]["ja"]["cer"]
        assert cer < 0.25, (factor, cer)
    memo = FeatureMemo(teacher.processor)
    feats, _ = memo(copies.utterances[:1] + copies.utterances[3:4])
    with torch.no_grad():
        out = teacher.model.model.encoder(feats).last_hidden_state
    assert (out[0] - out[1]).norm() > 0.1 * out[0].norm()
