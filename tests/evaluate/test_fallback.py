"""Temperature fallback in decoding: loops are decoded again by seeded sampling, reproducibly."""

import pytest
import torch

from tests.conftest import tiny_model
from whisper_kdq.data.manifest import load_dataset
from whisper_kdq.evaluate import evaluate_model
from whisper_kdq.evaluate.decode import FALLBACK, TEXT_COMPRESSION_THRESHOLD, compression_ratio, transcribe, transcribe_ct2
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
    state = torch.random.get_rng_state()
    first = transcribe(model, tiny_processor, utts, fallback=True).hypotheses
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state is left as it was
    again = transcribe(model, tiny_processor, utts, fallback=True).hypotheses
    assert first == again and first != greedy
    assert all(kw["temperature"] == FALLBACK["temperature"] and "do_sample" not in kw for kw in seen)


def test_ctranslate2_fallback_redecodes_loops_reproducibly(tiny_model_dir, fixture_manifest, tiny_processor, tmp_path):
    """The same for the CTranslate2 engine, with openai/whisper's criteria (text compression, mean log-prob)."""
    from whisper_kdq.export import export_model
    from whisper_kdq.models.refs import load_model

    export_model(load_model(str(tiny_model_dir)), "ct2", tmp_path / "ct2")
    utts = load_dataset(fixture_manifest).utterances[:2]
    greedy = transcribe_ct2(tmp_path / "ct2", tiny_processor, utts).hypotheses
    assert max(compression_ratio(h) for h in greedy) > TEXT_COMPRESSION_THRESHOLD  # the random model loops
    first = transcribe_ct2(tmp_path / "ct2", tiny_processor, utts, fallback=True).hypotheses
    again = transcribe_ct2(tmp_path / "ct2", tiny_processor, utts, fallback=True).hypotheses
    assert first == again and first != greedy


def test_compression_ratio_tells_a_loop_from_speech():
    assert compression_ratio("The cat is sleeping on the sofa.") < 1.5
    assert compression_ratio("the the the the the the the the the the the the the the the the the") > 3
    assert compression_ratio("") == 0.0


@pytest.mark.integration
def test_fallback_repairs_loops_of_real_whisper_base_at_4_bits_per_channel(fixture_manifest):
    """Real whisper-base rounded to 4 bits per output channel (no groups) loops on real speech; the
    fallback decodes those clips again, and the error does not grow."""
    from torch.nn.utils import parametrize

    from whisper_kdq.models.refs import load_model
    from whisper_kdq.quant.fake import prepare_qat
    from whisper_kdq.quant.plan import plan_from_options

    base = load_model("base")
    broken = prepare_qat(base.model, plan_from_options(bits=4, granularity="per-channel")).eval()
    loaded = LoadedModel(broken, base.processor, "base-rtn4-channel", "transformers", None, 0)
    dataset = load_dataset(fixture_manifest)
    with parametrize.cached():  # the fake-quantized weights once, not at every decoding step
        greedy = evaluate_model(loaded, dataset)
        again = evaluate_model(loaded, dataset, fallback=True)
    looping = [p for p in greedy["predictions"] if len(p["hypothesis"]) > 2 * len(p["reference"]) + 20]
    assert looping, "expected this model to loop on some clip"
    changed = {p["id"] for p, q in zip(greedy["predictions"], again["predictions"]) if p["hypothesis"] != q["hypothesis"]}
    assert {p["id"] for p in looping} <= changed
    for lang, stats in again["languages"].items():
        key = "cer" if lang == "ja" else "wer"
        assert stats[key] <= greedy["languages"][lang][key]
    assert again["decoding"] == {"beam_size": 1, "fallback": True, "window_s": 30.0}
