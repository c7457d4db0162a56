"""Datasets: JSONL / CSV manifests and saved Hugging Face `datasets` directories.

A manifest row has `audio` (a path relative to the manifest), `text`, and an optional `language`
(ISO 639-1 code, e.g. `ja`, `en`) and `split`. Every problem is reported with the manifest line it
comes from; with `skip_bad=True` bad rows are counted and listed instead of stopping the run.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from whisper_kdq.data.audio import SAMPLE_RATE, AudioError, load_audio
from whisper_kdq.errors import UserError

# Whisper's language codes (the tokenizer's <|xx|> tokens), so that a typo is caught up front.
from transformers.models.whisper.tokenization_whisper import LANGUAGES as WHISPER_LANGUAGES


class ManifestError(UserError):
    """A manifest that cannot be read, or a row in it that is not usable."""


@dataclass(frozen=True)
class Utterance:
    """One clip of a dataset. `audio` is an absolute path, or None when `samples` are in memory."""

    id: str
    text: str
    language: str | None
    audio: Path | None = None
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)
    split: str | None = None
    source: str = ""  # "manifest.jsonl:12" — where to look when something is wrong
    speed: float = 1.0  # played this many times faster (data.augment): a perturbed copy of the clip

    def load(self) -> np.ndarray:
        """16 kHz mono float32 samples."""
        if self.samples is not None:
            samples = self.samples
        else:
            assert self.audio is not None
            try:
                samples = load_audio(self.audio)
            except AudioError as exc:
                raise AudioError(f"{self.source}: {exc}") from None
        if self.speed != 1.0:
            from whisper_kdq.data.augment import speed_perturb

            samples = speed_perturb(samples, self.speed)
        return samples


@dataclass
class Dataset:
    utterances: list[Utterance]
    skipped: list[str] = field(default_factory=list)  # one-line reasons, with their line numbers

    def __len__(self) -> int:
        return len(self.utterances)

    def split(self, name: str) -> "Dataset":
        return Dataset([u for u in self.utterances if u.split == name], list(self.skipped))

    def spread(self, n: int) -> "Dataset":
        """At most `n` utterances taken in turn from each language, kept in file order: the first `n`
        of a manifest sorted by language would all be of its first language."""
        queues: dict[str | None, list[int]] = {}
        for i, u in enumerate(self.utterances):
            queues.setdefault(u.language, []).append(i)
        picked: list[int] = []
        while len(picked) < n and any(queues.values()):
            for queue in queues.values():
                if queue and len(picked) < n:
                    picked.append(queue.pop(0))
        return Dataset([self.utterances[i] for i in sorted(picked)], list(self.skipped))

    def languages(self) -> list[str]:
        return sorted({u.language or "?" for u in self.utterances})


def load_dataset(
    path: str | Path,
    *,
    skip_bad: bool = False,
    check_audio: bool = True,
    split: str | None = None,
    language: str | None = None,
    limit: int | None = None,
) -> Dataset:
    """Load a JSONL/CSV manifest or a saved HF datasets directory.

    `check_audio` decodes every clip up front so that a corrupt file is reported before any model
    work starts. `split` keeps only rows whose `split` column matches, `language` only rows of that
    language (rows without one are left out). `limit` keeps the first N.
    """
    path = Path(path)
    if language is not None:
        language = _language_code(language)
    if not path.exists():
        raise ManifestError(f"dataset not found: {path}")
    if path.is_dir():
        rows = _hf_rows(path)
    elif path.suffix.lower() in (".jsonl", ".json"):
        rows = _jsonl_rows(path)
    elif path.suffix.lower() in (".csv", ".tsv"):
        rows = _csv_rows(path)
    else:
        raise ManifestError(f"unknown dataset format {path.suffix!r}: use .jsonl, .csv or a saved datasets directory")

    good: list[Utterance] = []
    skipped: list[str] = []
    for source, row in rows:
        try:
            utt = _utterance(path, source, row)
            if split is not None and utt.split != split:
                continue
            if language is not None and utt.language != language:
                continue
            if check_audio and utt.samples is None:
                utt = Utterance(**{**utt.__dict__, "samples": utt.load()})
            good.append(utt)
        except UserError as exc:
            if not skip_bad:
                raise ManifestError(f"{exc} (use --skip-bad to skip bad rows)") from None
            skipped.append(str(exc))
        if limit is not None and len(good) >= limit:
            break
    if not good:
        wanted = " ".join(f"{k} {v!r}" for k, v in (("of split", split), ("of language", language)) if v is not None)
        raise ManifestError(f"{path}: no usable utterances" + (f" {wanted}" if wanted else "")
                            + (f" ({len(skipped)} skipped)" if skipped else ""))
    return Dataset(good, skipped)


def _utterance(manifest: Path, source: str, row: dict) -> Utterance:
    if isinstance(row, _BadRow):
        raise ManifestError(row.message)
    if not isinstance(row, dict):
        raise ManifestError(f"{source}: expected an object with audio and text")
    text = row.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ManifestError(f"{source}: missing or empty text")
    language = row.get("language") or None
    if language is not None:
        try:
            language = _language_code(language)
        except ManifestError as exc:
            raise ManifestError(f"{source}: {exc}") from None
    split = row.get("split") or None
    uid = str(row.get("id") or source)
    samples = row.get("_samples")
    if samples is not None:
        return Utterance(uid, text.strip(), language, None, samples, split, source)
    audio = row.get("audio")
    if not isinstance(audio, str) or not audio.strip():
        raise ManifestError(f"{source}: missing audio path")
    audio_path = Path(audio)
    if not audio_path.is_absolute():
        audio_path = (manifest.parent / audio_path).resolve()
    if not audio_path.is_file():
        raise ManifestError(f"{source}: audio file not found: {audio_path}")
    return Utterance(uid, text.strip(), language, audio_path, None, split, source)


def _language_code(value: object) -> str:
    """`value` as one of Whisper's language codes, so that a typo is caught up front."""
    code = str(value).strip().lower()
    if code not in WHISPER_LANGUAGES:
        raise ManifestError(f"unknown language code {code!r} (use ISO 639-1 codes such as ja, en)")
    return code


def _jsonl_rows(path: Path):
    with path.open(encoding="utf-8-sig") as f:  # -sig: tolerate a byte order mark
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            source = f"{path.name}:{number}"
            try:
                yield source, json.loads(line)
            except json.JSONDecodeError as exc:
                yield source, _BadRow(f"{source}: not valid JSON ({exc.msg})")


def _csv_rows(path: Path):
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with path.open(encoding="utf-8-sig", newline="") as f:  # -sig: spreadsheets write a byte order mark
        reader = csv.DictReader(f, delimiter=delimiter)
        missing = {"audio", "text"} - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path.name}:1: header lacks column(s) {', '.join(sorted(missing))}")
        for row in reader:  # line_num: the file line where the row ends (blank lines are skipped)
            yield f"{path.name}:{reader.line_num}", row


def _hf_rows(path: Path):
    """Rows of a `datasets.save_to_disk` directory: an `audio` column (decoded) and a `text` column."""
    try:
        import datasets  # optional: only needed for this input format
    except ImportError:
        raise ManifestError("reading a saved datasets directory needs `pip install datasets`") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as exc:  # datasets raises many types for a wrong directory
        raise ManifestError(f"{path}: not a saved datasets directory ({str(exc).splitlines()[0]})") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = datasets.concatenate_datasets([ds[k].add_column("split", [k] * len(ds[k])) for k in ds])
    text_col = next((c for c in ("text", "sentence", "transcription") if c in ds.column_names), None)
    if "audio" not in ds.column_names or text_col is None:
        raise ManifestError(f"{path}: needs an `audio` column and a `text` column, has {ds.column_names}")
    for index, row in enumerate(ds):
        source = f"{path.name}[{index}]"
        audio = row["audio"]
        array = np.asarray(audio["array"], dtype=np.float32) if isinstance(audio, dict) else None
        if array is None or array.size == 0:
            yield source, _BadRow(f"{source}: empty or undecodable audio")
            continue
        rate = int(audio.get("sampling_rate", SAMPLE_RATE))
        if array.ndim > 1:
            array = array.mean(axis=-1)
        if rate != SAMPLE_RATE:
            import soxr

            array = soxr.resample(array, rate, SAMPLE_RATE).astype(np.float32)
        yield source, {"text": row[text_col], "language": row.get("language"), "split": row.get("split"),
                       "id": row.get("id"), "_samples": array}


class _BadRow(dict):
    """A row that failed to parse; `_utterance` reports its message."""

    def __init__(self, message: str) -> None:
        super().__init__()
        self.message = message
