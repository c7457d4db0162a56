"""The pipeline's students: what it asks `whisper-kdq distill` for (the training window, its cache file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pipeline  # noqa: E402


def _pipeline(tmp_path: Path, *flags: str) -> tuple[pipeline.Pipeline, list[tuple[str, ...]]]:
    corpus = tmp_path / "corpus"
    corpus.mkdir(parents=True)
    rows = [{"id": f"{lang}{i}", "audio": "x.flac", "text": "t", "language": lang, "split": "train"}
            for lang in ("ja", "en") for i in range(3)]
    (corpus / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    p = pipeline.Pipeline(pipeline.parse_args(["--corpus", str(corpus), "--out", str(tmp_path / "out"), "--ja", "2",
                                               "--en", "1", *flags]))
    calls: list[tuple[str, ...]] = []
    p.cli = lambda *a: calls.append(a) or {"model": "m", "wall_s": 1.0}
    return p, calls


def test_train_window_reaches_every_student_and_its_own_teacher_cache(tmp_path):
    p, calls = _pipeline(tmp_path, "--train-window", "10")
    p.distill("student-kd", "--kd", "1")
    args = calls[-1]
    assert args[args.index("--window") + 1] == "10"
    assert args[args.index("--teacher-cache") + 1].endswith("teacher-cache-w10.pt")
    plain, calls = _pipeline(tmp_path / "plain")
    plain.distill("student-kd", "--kd", "1")
    assert "--window" not in calls[-1] and calls[-1][calls[-1].index("--teacher-cache") + 1].endswith("teacher-cache.pt")
