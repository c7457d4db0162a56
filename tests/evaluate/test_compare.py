"""evaluate/compare.py: per-utterance errors that sum to the corpus rates, and the paired bootstrap."""

from __future__ import annotations

import pytest

from whisper_kdq.evaluate.compare import compare_predictions, paired_bootstrap, utterance_errors
from whisper_kdq.evaluate.metrics import score

EN_REFS = ["The cat sat on the mat.", "It is raining today.", "?!", "Mr. Smith paid twenty dollars."]
EN_HYPS = ["the cat sat on a mat", "it is rain in today", "hello", "mister smith paid $20"]
JA_REFS = ["東京の天気は晴れです。", "駅まで歩いて十分です。"]
JA_HYPS = ["東京の電気は晴れです", "駅まで 歩いて 十分です"]


@pytest.mark.parametrize("refs,hyps,language,metric", [(EN_REFS, EN_HYPS, "en", "wer"), (EN_REFS, EN_HYPS, "en", "cer"),
                                                       (JA_REFS, JA_HYPS, "ja", "cer"), (JA_REFS, JA_HYPS, "ja", "wer")])
def test_utterance_errors_sum_to_the_corpus_rate(refs, hyps, language, metric):
    rows = utterance_errors(refs, hyps, language, metric)
    corpus = score(refs, hyps, language)
    assert len(rows) == corpus.n  # the empty reference is left out, as score leaves it out
    assert abs(sum(e for e, _ in rows) / sum(n for _, n in rows) - getattr(corpus, metric)) < 1e-12


def test_a_model_against_itself_changes_nothing_and_a_worse_one_is_seen_as_worse():
    base = [(1, 10)] * 40 + [(0, 10)] * 40
    same = paired_bootstrap(base, base, "wer")
    assert same.relative == 0 and same.low == 0 and same.high == 0 and same.n == 80
    worse = paired_bootstrap(base, [(e + 1, n) for e, n in base], "wer")
    assert worse.relative == 2.0 and 1.0 < worse.low <= 2.0 <= worse.high  # always worse: the interval excludes 0
    mixed = [(0, 10)] * 40 + [(1, 10)] * 40  # as many errors, on other clips: no evidence of a change
    even = paired_bootstrap(base, mixed, "wer")
    assert even.relative == 0 and even.low < 0 < even.high
    assert paired_bootstrap(base, mixed, "wer", seed=3).as_dict() == paired_bootstrap(base, mixed, "wer", seed=3).as_dict()


def test_no_base_error_gives_no_ratio_and_unpaired_input_is_refused():
    clean = paired_bootstrap([(0, 5), (0, 5)], [(1, 5), (0, 5)], "cer")
    assert clean.relative is None and clean.as_dict()["ci95"] is None and clean.other == 0.1
    with pytest.raises(ValueError, match="same utterances"):
        paired_bootstrap([(0, 5)], [(0, 6)], "cer")
    # An empty transcript is all deletions, not an error of the counting.
    assert utterance_errors(["Hello world."], [""], "en") == [(2, 2)] and utterance_errors(["東京です"], ["。"], "ja") == [(4, 4)]


def test_prediction_rows_are_matched_by_id_per_language():
    rows = [{"id": f"en{i}", "language": "en", "reference": r, "hypothesis": h} for i, (r, h) in enumerate(zip(EN_REFS, EN_HYPS))]
    rows += [{"id": f"ja{i}", "language": "ja", "reference": r, "hypothesis": h} for i, (r, h) in enumerate(zip(JA_REFS, JA_HYPS))]
    perfect = [{**row, "hypothesis": row["reference"]} for row in reversed(rows)]  # order does not matter
    changes = compare_predictions(rows, perfect)
    assert set(changes) == {"en", "ja"} and changes["ja"].metric == "cer" and changes["en"].metric == "wer"
    assert changes["en"].relative == -1.0 and changes["en"].base == score(EN_REFS, EN_HYPS, "en").wer
    with pytest.raises(ValueError, match="different utterances"):
        compare_predictions(rows, perfect[1:])
