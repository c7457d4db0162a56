"""benchmarks/corpus.py: the command that synthesizes the corpus (synthesizers replaced by a tone)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import corpus  # noqa: E402

from whisper_kdq.data import synth  # noqa: E402
from whisper_kdq.data.audio import SAMPLE_RATE  # noqa: E402


def _tone(text, language, voice, rate):
    return (0.5 * np.sin(np.arange(SAMPLE_RATE // 2) * 0.05)).astype(np.float32)


def test_wide_test_flag_adds_the_test_only_sentences(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(synth, "synthesize_one", _tone)
    monkeypatch.setattr(synth, "load_test_sentences",
                        lambda language: {"ja": ["新しい文です。", "もう一つの文です。"], "en": ["A new one."]}[language])
    assert corpus.main(["--out", str(tmp_path), "--ja", "6", "--en", "4", "--quiet"]) == 0
    narrow = capsys.readouterr().out
    assert corpus.main(["--out", str(tmp_path), "--ja", "6", "--en", "4", "--quiet", "--wide-test"]) == 0
    wide = capsys.readouterr().out

    def test_count(table: str, language: str) -> int:
        row = next(line for line in table.splitlines() if line.startswith(language))
        return int(row.split()[1])  # columns: test dev train total

    assert test_count(wide, "ja") == test_count(narrow, "ja") + 2
    assert test_count(wide, "en") == test_count(narrow, "en") + 1
