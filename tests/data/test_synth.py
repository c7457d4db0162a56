"""The synthesized corpus: sentence lists, deterministic splits, held-out voices, resumable synthesis."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import soundfile as sf

from whisper_kdq.data import synth
from whisper_kdq.data.audio import SAMPLE_RATE, load_audio
from whisper_kdq.data.synth import (LANGUAGES, SPLITS, load_sentences, load_test_sentences, plan_corpus,
                                   synthesize_corpus)


@pytest.fixture(scope="module")
def full_plan():
    return plan_corpus(seed=0)


# ------------------------------------------------------------------------------------------ sentences


def test_japanese_sentences():
    lines = load_sentences("ja")
    assert len(lines) >= 600 and len(set(lines)) == len(lines)
    assert not [s for s in lines if re.search(r"[A-Za-zＡ-Ｚａ-ｚ]", s)]  # kokoro reads Latin letters badly
    assert sum(8 <= len(s) <= 40 for s in lines) >= 0.95 * len(lines)


def test_english_sentences():
    lines = load_sentences("en")
    assert len(lines) >= 300 and len(set(lines)) == len(lines)
    assert all(5 <= len(s.split()) <= 20 for s in lines)
    assert not [s for s in lines if "$" in s or "%" in s]  # espeak-ng reads these awkwardly


def test_sentence_files_have_no_duplicate_lines():
    from importlib import resources

    for name in ("ja", "en", "ja-test", "en-test"):
        raw = resources.files("whisper_kdq.data.sentences").joinpath(f"{name}.txt").read_text(encoding="utf-8")
        lines = [line.strip() for line in raw.splitlines() if line.strip()]
        assert len(lines) == len(set(lines)), name


def test_test_only_sentences_are_new_and_like_the_others():
    ja, en = load_test_sentences("ja"), load_test_sentences("en")
    assert len(ja) >= 4 * 90 and len(en) >= 4 * 60  # five times the test split
    assert not set(ja) & set(load_sentences("ja")) and not set(en) & set(load_sentences("en"))
    assert not [s for s in ja if re.search(r"[A-Za-zＡ-Ｚａ-ｚ0-9０-９]", s)]
    assert all(8 <= len(s) <= 40 for s in ja)
    assert all(5 <= len(s.split()) <= 20 and s.isascii() for s in en)
    assert not [s for s in en if re.search(r"[0-9$%]", s)]


# ----------------------------------------------------------------------------------------------- plan


def test_plan_is_deterministic_and_depends_on_the_seed(full_plan):
    assert plan_corpus(seed=0) == full_plan
    other = plan_corpus(seed=1)
    assert {(c.text, c.split) for c in other} != {(c.text, c.split) for c in full_plan}


def test_plan_ignores_sentence_order():
    lines = {"ja": load_sentences("ja"), "en": load_sentences("en")}
    shuffled = {k: list(reversed(v)) for k, v in lines.items()}
    assert plan_corpus(sentences=lines) == plan_corpus(sentences=shuffled)


def test_full_size_split_counts(full_plan):
    counts = {(c.language, c.split): 0 for c in full_plan}
    for clip in full_plan:
        counts[(clip.language, clip.split)] += 1
    assert counts[("ja", "test")] == 90 and counts[("ja", "dev")] == 40
    assert counts[("en", "test")] == 60 and counts[("en", "dev")] == 30
    assert counts[("ja", "train")] >= 400 and counts[("en", "train")] >= 200
    assert len({c.id for c in full_plan}) == len(full_plan)


@pytest.mark.parametrize("language", ["ja", "en"])
def test_test_voices_and_sentences_are_held_out(full_plan, language):
    clips = [c for c in full_plan if c.language == language]
    by_split = {s: [c for c in clips if c.split == s] for s in SPLITS}
    test_voices = {c.voice for c in by_split["test"]}
    seen_voices = {c.voice for c in by_split["train"] + by_split["dev"]}
    assert test_voices == set(LANGUAGES[language].test_voices)
    assert not test_voices & seen_voices
    texts = {s: {c.text for c in by_split[s]} for s in SPLITS}
    assert not texts["test"] & texts["train"] and not texts["test"] & texts["dev"]
    assert not texts["dev"] & texts["train"]
    assert len(seen_voices) == len(LANGUAGES[language].train_voices)  # every train voice is used


def test_limits_keep_all_splits_and_are_a_subset(full_plan):
    small = plan_corpus(ja_limit=12, en_limit=8)
    assert sum(c.language == "ja" for c in small) == 12 and sum(c.language == "en" for c in small) == 8
    for language in ("ja", "en"):
        assert {c.split for c in small if c.language == language} == set(SPLITS)
    assert set(small) <= set(full_plan)  # same ids, texts, voices and rates as the full corpus
    assert [c.split for c in small] == sorted((c.split for c in small), key=SPLITS.index)  # test first


@pytest.mark.parametrize("limit", [0, 1, 2, 3, 5, 50, 699, 10_000])
def test_proportional_limits_add_up(limit):
    clips = plan_corpus(ja_limit=limit, en_limit=0)
    total = len(load_sentences("ja"))
    assert len(clips) == min(limit, total)
    if 3 <= limit <= total:
        assert {c.split for c in clips} == set(SPLITS)


def test_wide_test_adds_test_clips_and_changes_no_other(full_plan):
    wide = plan_corpus(seed=0, wide_test=True)
    extra = [c for c in wide if c not in set(full_plan)]
    assert set(full_plan) <= set(wide) and len({c.id for c in wide}) == len(wide)
    for language, spec in LANGUAGES.items():
        mine = [c for c in extra if c.language == language]
        assert len(mine) == len(load_test_sentences(language))
        assert {c.split for c in mine} == {"test"} and {c.voice for c in mine} == set(spec.test_voices)
        assert all(c.id.startswith(f"{language}-test-w") for c in mine)
        seen = {c.text for c in full_plan if c.language == language and c.split != "test"}
        assert not {c.text for c in mine} & seen
    assert [c.split for c in wide] == sorted((c.split for c in wide), key=SPLITS.index)  # test first
    assert plan_corpus(seed=0, wide_test=True) == wide


def test_wide_test_drops_sentences_of_the_main_list():
    lines = {"ja": load_sentences("ja")[:40], "en": load_sentences("en")[:40]}
    extra = {"ja": [lines["ja"][0], "新しい文です。"], "en": ["A brand new sentence to read."]}
    clips = plan_corpus(sentences=lines, wide_test=True, test_sentences=extra)
    wide = [c for c in clips if "-test-w" in c.id]
    assert sorted(c.text for c in wide) == ["A brand new sentence to read.", "新しい文です。"]


# ------------------------------------------------------------------------------------- synthesis loop


class FakeSynth:
    """Stands in for the synthesizers: a short tone whose pitch depends on the text."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.calls: list[str] = []
        self.fail_after = fail_after

    def __call__(self, text, language, voice, rate):
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise KeyboardInterrupt  # as if the user pressed Ctrl-C
        self.calls.append(text)
        t = np.arange(int(0.5 * SAMPLE_RATE)) / SAMPLE_RATE
        return (0.5 * np.sin(2 * np.pi * (200 + len(text)) * t)).astype(np.float32)


def _rows(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_corpus_files_and_resume(tmp_path, monkeypatch):
    fake = FakeSynth()
    monkeypatch.setattr(synth, "synthesize_one", fake)
    manifest = synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False)
    assert manifest == tmp_path / "manifest.jsonl" and len(fake.calls) == 10
    rows = _rows(manifest)
    assert len(rows) == 10
    assert set(rows[0]) >= {"id", "audio", "text", "language", "split", "voice"}
    for row in rows:
        assert (tmp_path / row["audio"]).is_file() and row["audio"] == f"audio/{row['language']}/{row['id']}.flac"
        assert sf.info(str(tmp_path / row["audio"])).samplerate == SAMPLE_RATE
    per_split = {s: _rows(tmp_path / f"{s}.jsonl") for s in SPLITS}
    assert sorted(r["id"] for s in SPLITS for r in per_split[s]) == sorted(r["id"] for r in rows)
    assert all(r["split"] == s for s in SPLITS for r in per_split[s])
    assert not list(tmp_path.rglob("*.tmp"))

    mtimes = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.flac")}
    fake.calls.clear()
    synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False)
    assert fake.calls == []  # nothing synthesized again
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*.flac")} == mtimes
    assert _rows(manifest) == rows

    (tmp_path / rows[3]["audio"]).unlink()
    synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False)
    assert fake.calls == [rows[3]["text"]]


def test_wide_test_grows_an_existing_corpus_in_place(tmp_path, monkeypatch):
    fake = FakeSynth()
    monkeypatch.setattr(synth, "synthesize_one", fake)
    monkeypatch.setattr(synth, "load_test_sentences",
                        lambda language: {"ja": ["新しい文です。"], "en": ["A brand new sentence to read."]}[language])
    rows = _rows(synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False))
    fake.calls.clear()
    manifest = synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False, wide_test=True)
    assert sorted(fake.calls) == ["A brand new sentence to read.", "新しい文です。"]  # only the new clips
    wide = _rows(manifest)
    assert len(wide) == len(rows) + 2 and all(r in wide for r in rows)
    assert len(_rows(tmp_path / "test.jsonl")) == sum(r["split"] == "test" for r in rows) + 2


def test_growing_a_corpus_keeps_its_clips_listed_when_interrupted(tmp_path, monkeypatch):
    # A --wide-test run stopped half-way (or read by another job while it runs) must not leave manifests that
    # list only the clips it has reached: the train and dev splits made earlier stay listed throughout.
    monkeypatch.setattr(synth, "synthesize_one", FakeSynth())
    monkeypatch.setattr(synth, "load_test_sentences", lambda language: [f"{language} new sentence {i}." for i in range(3)])
    rows = _rows(synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False))
    monkeypatch.setattr(synth, "SAVE_EVERY", 2)
    monkeypatch.setattr(synth, "synthesize_one", FakeSynth(fail_after=3))
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False, wide_test=True)
    listed = _rows(tmp_path / "manifest.jsonl")
    assert all(r in listed for r in rows) and len(listed) == len(rows) + 2  # saved after the 2nd new clip
    assert len(_rows(tmp_path / "train.jsonl")) == sum(r["split"] == "train" for r in rows) > 0


def test_interrupted_run_continues(tmp_path, monkeypatch):
    monkeypatch.setattr(synth, "SAVE_EVERY", 2)
    monkeypatch.setattr(synth, "synthesize_one", FakeSynth(fail_after=5))
    with pytest.raises(KeyboardInterrupt):
        synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False)
    assert len(list(tmp_path.rglob("*.flac"))) == 5
    assert len(_rows(tmp_path / "manifest.jsonl")) == 4  # saved periodically, after the 4th clip
    fake = FakeSynth()
    monkeypatch.setattr(synth, "synthesize_one", fake)
    manifest = synthesize_corpus(tmp_path, ja_limit=6, en_limit=4, progress=False)
    assert len(fake.calls) == 5 and len(_rows(manifest)) == 10


def test_manifest_loads_as_a_dataset(tmp_path, monkeypatch):
    from whisper_kdq.data.manifest import load_dataset

    monkeypatch.setattr(synth, "synthesize_one", FakeSynth())
    manifest = synthesize_corpus(tmp_path, ja_limit=3, en_limit=3, progress=False)
    dataset = load_dataset(manifest)
    assert len(dataset) == 6 and dataset.languages() == ["en", "ja"]
    assert len(load_dataset(tmp_path / "test.jsonl")) == 2
    assert len(dataset.split("dev")) == 2


def test_progress_prints_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synth, "synthesize_one", FakeSynth())
    synthesize_corpus(tmp_path, ja_limit=2, en_limit=1, progress=True)
    assert "corpus: 3 clips" in capsys.readouterr().err


def test_unknown_language_is_a_user_error():
    from whisper_kdq.errors import UserError

    with pytest.raises(UserError, match="fr"):
        synth.synthesize_one("Bonjour", "fr", "fr", 160)


# ------------------------------------------------------------------------------------ real synthesis


def test_real_synthesis_with_espeak_and_kokoro(tmp_path):
    manifest = synthesize_corpus(tmp_path, ja_limit=1, en_limit=1, progress=False)
    rows = _rows(manifest)
    assert sorted(r["language"] for r in rows) == ["en", "ja"]
    for row in rows:
        path = tmp_path / row["audio"]
        info = sf.info(str(path))
        assert info.samplerate == SAMPLE_RATE and info.channels == 1 and info.format == "FLAC"
        audio = load_audio(path)
        seconds = len(audio) / SAMPLE_RATE
        assert 1.0 < seconds < 15.0, (row, seconds)
        assert float(np.sqrt(np.mean(audio**2))) > 0.02  # not silent
        frames = audio[: len(audio) // 400 * 400].reshape(-1, 400)
        assert (np.sqrt((frames**2).mean(axis=1)) > 0.02).mean() > 0.3  # speech for much of the clip
