"""Text normalisation and error rates.

English is scored with Whisper's English normaliser (the `whisper-normalizer` package, a copy of
openai/whisper's); every other language with Whisper's basic normaliser. Languages written without
spaces between words (ja, zh, th, ...) are scored by CER with all spaces removed; their WER is
reported too, over the space-separated chunks the basic normaliser leaves (punctuation becomes a
space), which is a phrase error rate rather than a word error rate.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable

import jiwer

# Scripts without spaces between words: CER is the headline metric, spaces are dropped before scoring.
CER_LANGUAGES = {"ja", "zh", "yue", "th", "lo", "km", "my", "bo"}


@lru_cache(maxsize=None)
def normalizer_for(language: str | None) -> tuple[str, Callable[[str], str]]:
    """(name, function) of the normaliser used for `language`."""
    if language == "en":
        from whisper_normalizer.english import EnglishTextNormalizer

        return "whisper-english", EnglishTextNormalizer()
    from whisper_normalizer.basic import BasicTextNormalizer

    if language in CER_LANGUAGES:
        return "whisper-basic (CER without spaces)", BasicTextNormalizer()
    return "whisper-basic", BasicTextNormalizer()


@dataclass
class Scores:
    wer: float | None
    cer: float | None
    n: int  # utterances scored
    n_empty_reference: int  # utterances left out because the normalised reference was empty

    def as_dict(self) -> dict:
        return {"wer": self.wer, "cer": self.cer, "n": self.n, "n_empty_reference": self.n_empty_reference}


def score(references: list[str], hypotheses: list[str], language: str | None) -> Scores:
    """Corpus-level WER and CER (errors summed over utterances, divided by reference length)."""
    _, normalize = normalizer_for(language)
    refs, hyps, empty = [], [], 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        ref_n, hyp_n = normalize(ref).strip(), normalize(hyp).strip()
        if not ref_n:
            empty += 1
            continue
        refs.append(ref_n)
        hyps.append(hyp_n)
    if not refs:
        return Scores(None, None, 0, empty)
    wer = jiwer.wer(refs, [h if h else "" for h in hyps])
    if language in CER_LANGUAGES:
        cer = jiwer.cer(["".join(r.split()) for r in refs], ["".join(h.split()) for h in hyps])
    else:
        cer = jiwer.cer(refs, hyps)
    return Scores(float(wer), float(cer), len(refs), empty)
