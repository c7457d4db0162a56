"""Is one model's error rate really different from another's on the same clips? A paired bootstrap.

A test split of 60 English sentences holds about 560 words: one sentence misheard moves WER by half a
point, 3 % of a 16 % rate. A relative change of "+5 %" is then four words. So every comparison of two
models on the same utterances reports, beside the change, a 95 % interval from a paired bootstrap
(Koehn 2004; Bisani & Ney 2004): utterances are drawn with replacement, the same draw for both models,
and the relative change of the summed errors is recomputed each time.

Errors are counted per utterance exactly as `metrics.score` counts them over the corpus (same
normaliser, spaces dropped for CER languages), so the per-utterance sums give back the corpus rates.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import jiwer
import numpy as np

from whisper_kdq.evaluate.metrics import CER_LANGUAGES, normalizer_for


def headline_metric(language: str | None) -> str:
    """The rate a language is judged by: CER where words are not spaced, WER otherwise."""
    return "cer" if language in CER_LANGUAGES else "wer"


def utterance_errors(references: Sequence[str], hypotheses: Sequence[str], language: str | None,
                     metric: str | None = None) -> list[tuple[int, int]]:
    """(errors, reference length) per utterance by `metric` ("wer"/"cer"; default the language's headline),
    in words or characters after normalisation. Utterances whose normalised reference is empty are left out
    (as `metrics.score` leaves them out), so the list can be shorter than the input."""
    metric = metric or headline_metric(language)
    _, normalize = normalizer_for(language)
    out = []
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_n, hyp_n = normalize(ref).strip(), normalize(hyp).strip()
        if not ref_n:
            continue
        if metric == "wer":
            o = jiwer.process_words(ref_n, hyp_n)
        else:
            if language in CER_LANGUAGES:
                ref_n, hyp_n = "".join(ref_n.split()), "".join(hyp_n.split())
            o = jiwer.process_characters(ref_n, hyp_n)
        out.append((o.substitutions + o.deletions + o.insertions, o.hits + o.substitutions + o.deletions))
    return out


@dataclass
class Change:
    """`other`'s error rate against `base`'s on the same utterances."""

    metric: str
    base: float  # error rate of the base model
    other: float
    relative: float | None  # other / base - 1; None where the base makes no error
    low: float | None  # 95 % paired-bootstrap interval of `relative`
    high: float | None
    n: int  # utterances

    def as_dict(self) -> dict:
        return {"metric": self.metric, "base": self.base, "other": self.other, "relative": self.relative,
                "ci95": None if self.low is None else [self.low, self.high], "n": self.n}


def paired_bootstrap(base: Sequence[tuple[int, int]], other: Sequence[tuple[int, int]], metric: str,
                     rounds: int = 2000, seed: int = 0) -> Change:
    """The relative change of summed errors from `base` to `other` (per-utterance (errors, length), the same
    utterances in the same order) with its 95 % paired-bootstrap interval; seeded, so reproducible."""
    if len(base) != len(other) or any(b[1] != o[1] for b, o in zip(base, other)):
        raise ValueError("a paired comparison needs the same utterances (same reference lengths) in the same order")
    eb = np.array([b[0] for b in base], dtype=np.float64)
    eo = np.array([o[0] for o in other], dtype=np.float64)
    total = float(sum(b[1] for b in base)) or 1.0
    rate_b, rate_o = float(eb.sum() / total), float(eo.sum() / total)
    if not len(base) or eb.sum() == 0:
        return Change(metric, rate_b, rate_o, None, None, None, len(base))
    draws = np.random.default_rng(seed).integers(0, len(base), size=(rounds, len(base)))
    sb, so = eb[draws].sum(1), eo[draws].sum(1)
    ratios = so[sb > 0] / sb[sb > 0] - 1  # a draw without any base error has no ratio
    low, high = np.percentile(ratios, [2.5, 97.5])
    return Change(metric, rate_b, rate_o, float(eo.sum() / eb.sum() - 1), float(low), float(high), len(base))


def compare_predictions(base: Sequence[dict], other: Sequence[dict], rounds: int = 2000,
                        seed: int = 0) -> dict[str, Change]:
    """Per language, `other`'s headline rate against `base`'s. Both are prediction rows (`evaluate
    --predictions`: id, language, reference, hypothesis); utterances are matched by id and must be the same."""
    by_id = {row["id"]: row for row in other}
    missing = [row["id"] for row in base if row["id"] not in by_id]
    if missing or len(by_id) != len(base):
        raise ValueError(f"the two prediction sets hold different utterances (e.g. {(missing or ['?'])[0]!r})")
    changes = {}
    for language in sorted({row.get("language") or "?" for row in base}):
        rows = [row for row in base if (row.get("language") or "?") == language]
        code = None if language == "?" else language
        refs = [row["reference"] for row in rows]
        mine = utterance_errors(refs, [row["hypothesis"] for row in rows], code)
        theirs = utterance_errors(refs, [by_id[row["id"]]["hypothesis"] for row in rows], code)
        changes[language] = paired_bootstrap(mine, theirs, headline_metric(code), rounds, seed)
    return changes
