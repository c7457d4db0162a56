"""The pipeline's report: relative columns against the teacher, and a plot that survives off-chart rows."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from report import write_report  # noqa: E402


def _row(mb: float, cer: float, wer: float) -> dict:
    return {"size_bytes": mb * 1e6, "ratio": 290.4 / mb, "bits_per_weight": 32 * mb / 290.4, "cer_ja": cer,
            "wer_en": wer, "rtf_transformers": 0.2, "train_wall_s": 60.0}


def test_report_rows_relative_to_the_teacher_and_plot(tmp_path: Path) -> None:
    rows = {"teacher fp32": _row(290.4, 0.14, 0.20),
            "compressed": _row(54.5, 0.07, 0.21),
            "looping": _row(45.1, 0.90, 3.00)}  # far past three times the teacher: drawn at the chart's edge
    meta = {"machine": "x86_64", "date": "2026-11-30", "commit": "abc1234", "command": "pipeline.py"}
    write_report(tmp_path, meta, rows)
    table = (tmp_path / "results.md").read_text().splitlines()
    compressed = next(line for line in table if line.startswith("| compressed |"))
    assert "| 5.33 |" in compressed and "| -50.0 % | +5.0 % |" in compressed
    assert "| +1400.0 % |" in next(line for line in table if line.startswith("| looping |"))
    png = (tmp_path / "pareto.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    assert not [line for line in table if line.startswith("Test split")]  # not recorded: not claimed


def test_report_states_the_test_split_size(tmp_path: Path) -> None:
    meta = {"machine": "x86_64", "date": "2026-12-02", "commit": "abc1234", "command": "pipeline.py",
            "test_clips": {"en": 300, "ja": 450}}
    write_report(tmp_path, meta, {"teacher fp32": _row(290.4, 0.14, 0.20)})
    assert "Test split: 300 en clips, 450 ja clips." in (tmp_path / "results.md").read_text().splitlines()


def test_relative_columns_carry_paired_intervals_where_predictions_were_kept(tmp_path: Path) -> None:
    import json

    def predictions(name: str, wrong: int) -> str:
        rows = [{"model": name, "id": f"en{i}", "language": "en", "reference": "one two three four",
                 "hypothesis": "one two three five" if i < wrong else "one two three four"} for i in range(20)]
        rows += [{"model": name, "id": f"ja{i}", "language": "ja", "reference": "東京の天気",
                  "hypothesis": "東京の電気" if i < wrong else "東京の天気"} for i in range(20)]
        path = tmp_path / f"{name}.jsonl"
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n")
        return str(path)

    rows = {"teacher fp32": {**_row(290.4, 0.05, 0.0625), "predictions": predictions("t", 5)},
            "student": {**_row(29.0, 0.10, 0.125), "predictions": predictions("s", 10)},
            "older row": _row(54.5, 0.07, 0.21)}
    write_report(tmp_path, {"machine": "x", "date": "d", "commit": "c", "command": "p"}, rows)
    table = (tmp_path / "results.md").read_text().splitlines()
    student = next(line for line in table if line.startswith("| student |"))
    assert "| +100.0 % [+" in student  # twice the errors on the same clips: the whole interval above zero
    assert "[" not in next(line for line in table if line.startswith("| older row |"))
