"""benchmarks/grid_error.py on a tiny random Whisper: one row per grid and setting, the full range below the
restricted grid at the same bytes."""

from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import grid_error  # noqa: E402


def test_grid_error_table(tiny_model_dir, tmp_path):
    assert grid_error.main(["--model", str(tiny_model_dir), "--matrices", "fc1", "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / "grid_error.json").read_text())["rows"]
    assert len(rows) == len(grid_error.SETTINGS) * len(grid_error.GRIDS)
    assert all(all("fc1" in n for n in r["per_matrix"]) for r in rows)
    by = {(r["bits"], r["group_size"], r["grid"]): r for r in rows}
    for bits, group in grid_error.SETTINGS:
        full, restricted = by[bits, group, "full range"], by[bits, group, "restricted"]
        assert full["bits_per_weight"] == restricted["bits_per_weight"]
        assert full["relative_error"]["all"] < restricted["relative_error"]["all"]
    assert "| 2, g128 | full range |" in (tmp_path / "grid_error.md").read_text()
