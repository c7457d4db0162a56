"""Run directory plumbing: atomic training checkpoints with rotation, exact resume, the metrics log.

    runs/x/
      run.json            what was asked for (a resumed run must ask for the same thing)
      layer_map.json      the student's teacher layers
      metrics.jsonl       one line per step / evaluation
      checkpoints/step-000050/state.pt   model, optimizer, scheduler, RNG, step (last `keep` kept)
      best/ or model/     the final student, a model reference (`evaluate --model runs/x/model`)
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

from whisper_kdq.errors import UserError
from whisper_kdq.fileio import atomic_dir, write_text_atomic

# Fields of run.json that may differ between the first run and a resume (they do not change the result).
RESUMABLE_DIFFERENCES = {"steps", "save_every", "keep", "eval_every", "progress", "device", "teacher_cache"}


def check_run_dir(run_dir: Path, request: dict, force: bool) -> bool:
    """True when `run_dir` holds a compatible run to resume; creates it otherwise."""
    meta = run_dir / "run.json"
    if meta.is_file():
        previous = json.loads(meta.read_text(encoding="utf-8"))
        diff = sorted(k for k in set(previous) | set(request)
                      if k not in RESUMABLE_DIFFERENCES and previous.get(k) != request.get(k))
        if diff and not force:
            raise UserError(f"{run_dir} holds a different run ({diff[0]}: {previous.get(diff[0])!r} there, "
                            f"{request.get(diff[0])!r} now); use another --out, or --force to start over")
        if diff:
            shutil.rmtree(run_dir)
        else:
            return latest_checkpoint(run_dir) is not None
    elif run_dir.exists() and any(run_dir.iterdir()) and not force:
        raise UserError(f"{run_dir} exists and is not a whisper-kdq run; use another --out or --force")
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text_atomic(meta, json.dumps(request, indent=2, default=str) + "\n")
    return False


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = sorted((run_dir / "checkpoints").glob("step-*/state.pt"))
    return found[-1].parent if found else None


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Write `checkpoints/step-N/state.pt` atomically (temporary directory, then rename), keep the last `keep`."""
    target = run_dir / "checkpoints" / f"step-{step:06d}"
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_dir(target, force=True) as tmp:
        torch.save(state, tmp / "state.pt")
    for old in sorted((run_dir / "checkpoints").glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return target


def load_checkpoint(path: Path) -> dict:
    try:
        return torch.load(path / "state.pt", map_location="cpu", weights_only=False)
    except Exception as exc:  # a damaged checkpoint: say which, the user can delete it
        raise UserError(f"cannot read training checkpoint {path} ({type(exc).__name__}); delete it to resume "
                        "from the previous one") from None


class MetricsLog:
    """Append-only JSONL, flushed per line so that a killed run keeps everything it logged."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path = path
        self.enabled = enabled

    def write(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_after(self, step: int) -> None:
        """On resume: drop lines logged after the checkpoint (they will be logged again)."""
        if not self.enabled or not self.path.is_file():
            return
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                 if line.strip() and json.loads(line).get("step", 0) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in lines))
