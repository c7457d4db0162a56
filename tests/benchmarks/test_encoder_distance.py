"""benchmarks/encoder_distance.py: per split and voice, how far a student's encoder output is from the teacher's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import encoder_distance  # noqa: E402

from tests.conftest import FIXTURES, tiny_model, tiny_processor_obj  # noqa: E402


def test_distances_group_by_voice_and_grow_with_the_change(tmp_path, monkeypatch):
    teacher, other = tmp_path / "t", tmp_path / "s"
    model = tiny_model(seed=1)
    model.save_pretrained(teacher)
    tiny_processor_obj().save_pretrained(teacher)
    with torch.no_grad():  # the student: the teacher with its last encoder block's fc2 changed
        model.model.encoder.layers[-1].fc2.weight.mul_(1.5)
    model.save_pretrained(other)
    tiny_processor_obj().save_pretrained(other)
    rows = [json.loads(line) for line in (FIXTURES / "manifest.jsonl").read_text().splitlines()]
    for i, r in enumerate(rows):
        r.update(audio=str(FIXTURES / r["audio"]), split="dev" if i % 2 else "test", voice=f"v{i % 3}")
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "d.json"
    monkeypatch.setattr(sys, "argv", ["encoder_distance.py", str(teacher), str(other), "--teacher", str(teacher),
                                      "--data", str(manifest), "--window", "10", "--json", str(out)])
    encoder_distance.main()
    result = json.loads(out.read_text())
    expected = {f"{'dev' if i % 2 else 'test'}/v{i % 3}" for i in range(len(rows))}
    same, changed = result["models"][str(teacher)], result["models"][str(other)]
    assert set(same) == set(changed) == expected and sum(g["n"] for g in same.values()) == len(rows)
    assert all(g["mean"] < 1e-6 for g in same.values())
    assert all(g["mean"] > 1e-4 for g in changed.values()) and result["window_s"] == 10
