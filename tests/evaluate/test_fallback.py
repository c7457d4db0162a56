"""Temperature fallback in decoding: loops are decoded again by seeded sampling, reproducibly."""

import pytest

from tests.conftest import tiny_model
from whisper_kdq.data.manifest import load_dataset
from whisper_kdq.errors import UserError
from whisper_kdq.evaluate import evaluate_model
from whisper_kdq.evaluate.decode import FALLBACK, transcribe
from whisper_kdq.models.refs import LoadedModel


def test_fallback_redecodes_a_looping_model_and_is_reproducible(fixture_manifest, tiny_processor):
    """A random tiny Whisper repeats itself: greedy decoding gives loops; the fallback's sampled
    decodes differ from them and are the same on every run (seeded)."""
    model = tiny_model(seed=1)
    utts = load_dataset(fixture_manifest).utterances[:2]
    greedy = transcribe(model, tiny_processor, utts).hypotheses
    seen = []
    generate = model.generate
    model.generate = lambda *a, **kw: seen.append(kw) or generate(*a, **kw)
    first = transcribe(model, tiny_processor, utts, fallback=True).hypotheses
    again = transcribe(model, tiny_processor, utts, fallback=True).hypotheses
    assert first == again and first != greedy
    assert all(kw["temperature"] == FALLBACK["temperature"] and "do_sample" not in kw for kw in seen)


def test_fallback_is_refused_for_the_ctranslate2_engine(fixture_manifest, tiny_processor):
    loaded = LoadedModel(tiny_model(), tiny_processor, "tiny", "transformers", None, 0)
    with pytest.raises(UserError, match="transformers engine"):
        evaluate_model(loaded, load_dataset(fixture_manifest, limit=1), engine="ctranslate2", fallback=True)
