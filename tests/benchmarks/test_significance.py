"""benchmarks/significance.py: prediction files compared without decoding again."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _write(path: Path, model: str, hyps: list[str]) -> Path:
    refs = ["the cat sat on the mat", "it is raining today", "see you tomorrow"]
    rows = [{"model": model, "id": f"u{i}", "language": "en", "reference": r, "hypothesis": h}
            for i, (r, h) in enumerate(zip(refs, hyps))]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _run(*args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "significance.py"), *map(str, args)],
                          capture_output=True, text=True)


def test_a_student_file_against_the_teacher_file(tmp_path):
    teacher = _write(tmp_path / "t.jsonl", "t", ["the cat sat on a mat", "it is raining today", "see you tomorrow"])
    student = _write(tmp_path / "s.jsonl", "s", ["the cat sat on a mat", "it is rain in today", "see you tomorrow"])
    result = _run("--base", teacher, student, "--json")
    assert result.returncode == 0, result.stderr
    en = json.loads(result.stdout)["models"][str(student)]["en"]
    assert en["metric"] == "wer" and en["relative"] == 2.0 and en["n"] == 3  # 1 error -> 3 errors
    assert abs(en["base"] - 1 / 13) < 1e-12 and en["ci95"][0] <= 2.0 <= en["ci95"][1]
    text = _run("--base", teacher, student)
    assert "en WER 7.69 -> 23.08 %  +200.0 %" in text.stdout
    both = tmp_path / "both.jsonl"
    both.write_text(teacher.read_text() + student.read_text())
    refused = _run("--base", both, student)
    assert refused.returncode != 0 and "holds the predictions of 2 models" in refused.stderr


def test_ids_keep_a_subset_of_the_utterances(tmp_path):
    teacher = _write(tmp_path / "t.jsonl", "t", ["the cat sat on a mat", "it is raining today", "see you tomorrow"])
    student = _write(tmp_path / "s.jsonl", "s", ["the cat sat on a mat", "it is rain in today", "see you tomorrow"])
    first = json.loads(_run("--base", teacher, student, "--ids", "u[02]", "--json").stdout)
    en = first["models"][str(student)]["en"]
    assert first["ids"] == "u[02]" and en["n"] == 2 and en["relative"] == 0.0  # the changed clip u1 is left out
    none = _run("--base", teacher, student, "--ids", "^x")
    assert none.returncode != 0 and "no utterance id matches" in none.stderr
    bad = _run("--base", teacher, student, "--ids", "(")
    assert bad.returncode != 0 and "not a regular expression" in bad.stderr and "Traceback" not in bad.stderr


def test_files_of_different_clips_are_refused_in_one_line(tmp_path):
    teacher = _write(tmp_path / "t.jsonl", "t", ["the cat sat on a mat", "it is raining today", "see you tomorrow"])
    partial = tmp_path / "p.jsonl"
    partial.write_text(teacher.read_text().splitlines()[0] + "\n")
    refused = _run("--base", teacher, partial)
    assert refused.returncode != 0 and "different utterances" in refused.stderr and "--ids" in refused.stderr
    assert "Traceback" not in refused.stderr
    subset = json.loads(_run("--base", teacher, partial, "--ids", "u0", "--json").stdout)
    assert subset["models"][str(partial)]["en"]["n"] == 1
