"""Evaluate models on a dataset: per-language WER/CER, size, parameters, real-time factor.

    from whisper_kdq.evaluate import evaluate_model
    result = evaluate_model(load_model("base"), load_dataset("corpus/test.jsonl"))
    result["languages"]["ja"]["cer"]
"""

from __future__ import annotations

from typing import Callable

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.errors import UserError
from whisper_kdq.evaluate.decode import Transcripts, transcribe, transcribe_ct2
from whisper_kdq.evaluate.metrics import normalizer_for, score
from whisper_kdq.evaluate.window import FULL_WINDOW_S, trained_window
from whisper_kdq.models.refs import LoadedModel

ENGINES = ("transformers", "ctranslate2")


def evaluate_model(
    loaded: LoadedModel,
    dataset: Dataset,
    *,
    batch_size: int = 8,
    beam_size: int = 1,
    device: str = "cpu",
    engine: str = "transformers",
    compute_type: str = "default",
    fallback: bool = False,
    window_s: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> dict:
    """Decode `dataset` with `loaded` and score it per language; `window_s`: an audio window shorter
    than Whisper's 30 s (evaluate/window.py).

    Returns `{model, kind, engine, size_bytes, params, rtf, wall_s, audio_s, languages: {code: {wer,
    cer, n, n_empty_reference, normalizer}}, predictions: [...]}`.
    """
    utterances = dataset.utterances
    if engine == "transformers":
        out = transcribe(loaded.model, loaded.processor, utterances, batch_size=batch_size,
                         beam_size=beam_size, device=device, fallback=fallback, window_s=window_s, progress=progress)
    elif engine == "ctranslate2":
        if loaded.kind != "ctranslate2" or loaded.path is None:
            raise UserError(f"--engine ctranslate2 needs a CTranslate2 directory; {loaded.ref} is a {loaded.kind} model "
                            "(export it with `whisper-kdq export --format ct2`)")
        out = transcribe_ct2(loaded.path, loaded.processor, utterances, batch_size=batch_size,
                             beam_size=beam_size, device=device, compute_type=compute_type, fallback=fallback,
                             window_s=window_s, progress=progress)
    else:
        raise UserError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
    trained = trained_window(loaded.model)  # None for a model without the record (or without a torch model)
    return {**_report(loaded, dataset, out, engine), "decoding": {"beam_size": beam_size, "fallback": fallback,
                                                           "window_s": window_s or FULL_WINDOW_S},
            **({"trained_window_s": trained} if trained is not None else {})}


def _report(loaded: LoadedModel, dataset: Dataset, out: Transcripts, engine: str) -> dict:
    languages: dict[str, dict] = {}
    for language in sorted({u.language or "?" for u in dataset.utterances}):
        idx = [i for i, u in enumerate(dataset.utterances) if (u.language or "?") == language]
        code = None if language == "?" else language
        scores = score([dataset.utterances[i].text for i in idx], [out.hypotheses[i] for i in idx], code)
        languages[language] = {**scores.as_dict(), "normalizer": normalizer_for(code)[0]}
    predictions = [
        {"id": u.id, "language": u.language, "reference": u.text, "hypothesis": h, "source": u.source}
        for u, h in zip(dataset.utterances, out.hypotheses)
    ]
    return {
        "model": loaded.ref,
        "kind": loaded.kind,
        "engine": engine,
        "size_bytes": loaded.size_bytes,
        "params": loaded.params,
        "rtf": out.rtf,
        "wall_s": out.wall_s,
        "audio_s": out.audio_s,
        "languages": languages,
        "predictions": predictions,
        **({"info": loaded.info} if loaded.info else {}),
    }
