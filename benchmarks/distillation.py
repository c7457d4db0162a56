"""Distillation vs plain fine-tuning on the synthesized corpus, with the whisper-base teacher.

    python benchmarks/distillation.py [--corpus corpus] [--out runs/distill-bench] [--steps 300]
        [--ja 570 --en 325] [--lr 1e-4] [--students 6+2,6+1] [--configs kd+hidden-restrained-dynamic,ce,kd,...]

Students are cut from the teacher: the whole encoder (frozen; its output is cached and shared with
the teacher) and 2 (or 1) of the 6 decoder blocks. Every configuration trains on the same
utterances for the same steps and is evaluated on the test split with `evaluate_model`. The
first-epoch cost of distillation (teacher work included) is compared with plain fine-tuning.
Writes results.json and results.md in --out; re-running resumes unfinished runs, skips finished ones.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MEMO_FILE = ROOT / "runs" / "test-encoder-outputs.pt"  # test-split encoder outputs of the frozen teacher encoder

# The first one fills the teacher cache (with hidden states) and is the one timed against `ce`.
CONFIGS = {
    "kd+hidden-restrained-dynamic": ["--kd", "1", "--hidden", "1", "--matching", "restrained-dynamic"],
    "ce": ["--kd", "0"],
    "kd": ["--kd", "1"],
    "kd+hidden-static": ["--kd", "1", "--hidden", "1", "--matching", "static"],
    "kd+hidden-dynamic": ["--kd", "1", "--hidden", "1", "--matching", "dynamic"],
}


class MemoEncoder(torch.nn.Module):
    """The frozen teacher encoder with its outputs remembered per input row.

    Every frozen-encoder student carries the teacher's encoder unchanged, so the test split's encoder
    outputs are the same for all of them: computed once, decoding is all that differs."""

    main_input_name = "input_features"

    def __init__(self, encoder: torch.nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.memo: dict[str, torch.Tensor] = {}

    def __getattr__(self, name: str):  # generate() reads e.g. conv1.stride from the encoder
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["encoder"], name)

    def forward(self, input_features, **kwargs):
        from transformers.modeling_outputs import BaseModelOutput

        keys = [hashlib.sha1(row.contiguous().cpu().numpy().tobytes()).hexdigest() for row in input_features]
        todo = [i for i, k in enumerate(keys) if k not in self.memo]
        if todo:
            out = self.encoder(input_features[todo]).last_hidden_state
            for i, row in zip(todo, out):
                self.memo[keys[i]] = row
        return BaseModelOutput(last_hidden_state=torch.stack([self.memo[k] for k in keys]))

    def load(self, path: Path) -> None:
        if path.is_file():
            self.memo.update(torch.load(path, map_location="cpu"))

    def save(self, path: Path) -> None:
        """Shared between benchmark processes: the test split's encoder outputs (fp32, exact)."""
        from whisper_kdq.fileio import atomic_file

        if not path.is_file():
            with atomic_file(path) as tmp:
                torch.save(self.memo, tmp)


def subset(corpus: Path, ja: int, en: int, seed: int) -> Path:
    """A balanced training subset of the train split, written beside the corpus manifest."""
    rows = [json.loads(x) for x in (corpus / "manifest.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()]
    train = [r for r in rows if r.get("split") == "train"]
    rng = random.Random(seed)
    picked = []
    for lang, n in (("ja", ja), ("en", en)):
        pool = [r for r in train if r.get("language") == lang]
        rng.shuffle(pool)
        picked += pool[:n]
    path = corpus / f"train-subset-ja{ja}-en{en}.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in picked), encoding="utf-8")
    return path


def epoch_seconds(run: Path, steps_per_epoch: int) -> tuple[float, float]:
    """(seconds of the first epoch, mean seconds per step after it) from the run's metrics log."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    steps = {r["step"]: r["step_s"] for r in rows if "step_s" in r}
    first = sum(v for s, v in steps.items() if s <= steps_per_epoch)
    later = [v for s, v in steps.items() if s > steps_per_epoch]
    return first, (sum(later) / len(later) if later else float("nan"))


def train_seconds(run: Path) -> float:
    """Seconds spent in training steps (teacher-cache filling included), summed over resumed parts."""
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return sum(r["step_s"] for r in rows if "step_s" in r)


def run_timed(cmd: list[str]) -> tuple[dict, float]:
    """Run a `--json` distill command; returns (its summary, CPU seconds it used).

    CPU seconds, unlike wall time, hardly depend on what else the shared machine runs."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return json.loads(out), cpu


def evaluate_student(model_dir: str, test, memo: MemoEncoder | None, device: str) -> dict:
    from whisper_kdq.evaluate import evaluate_model
    from whisper_kdq.models.refs import load_model

    loaded = load_model(model_dir, device=device)
    if memo is not None:
        mine, shared = loaded.model.model.encoder.state_dict(), memo.encoder.state_dict()
        if any(not torch.equal(v, shared[k]) for k, v in mine.items()):
            raise RuntimeError(f"{model_dir}: the encoder is not the teacher's; cannot share its outputs")
        loaded.model.model.encoder = memo
    return evaluate_model(loaded, test, batch_size=32, device=device)  # fewer decoding steps: per-step overhead dominates on CPU


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "distill-bench")
    p.add_argument("--teacher", default="base")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ja", type=int, default=570, help="Japanese training utterances (570: the whole train split)")
    p.add_argument("--en", type=int, default=325, help="English training utterances (325: the whole train split)")
    p.add_argument("--students", default="6+2,6+1", help="frozen encoder + N decoder blocks, e.g. 6+2,6+1")
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--epoch-cost", default="", help="instead: time one epoch of CE vs KD+hidden, "
                   "nothing cached beforehand, on --epoch-cost-utts utterances: 4+2 (encoder trains) or 6+2f (frozen)")
    p.add_argument("--epoch-cost-utts", type=int, default=32)
    p.add_argument("--report-only", action="store_true", help="rewrite results.md from results.json")
    args = p.parse_args(argv)
    if args.epoch_cost:
        return epoch_cost(args)
    if args.report_only:
        write_report(args, json.loads((args.out / "results.json").read_text()), argv, (args.ja + args.en) // args.batch_size)
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    train = subset(args.corpus, args.ja, args.en, seed=0)
    steps_per_epoch = (args.ja + args.en) // args.batch_size
    from whisper_kdq.data.manifest import load_dataset

    test = load_dataset(args.corpus / "manifest.jsonl", split="test")
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    memo = None
    for student in args.students.split(","):
        dec = student.split("+")[1]
        for name in args.configs.split(","):
            key = f"{student} {name}"
            if key in results or (dec == "1" and name == "kd+hidden-dynamic"):
                continue  # with one student block, dynamic and restrained-dynamic are the same argmin
            run = args.out / f"{student}-{name}"
            cmd = [sys.executable, "-m", "whisper_kdq", "distill", "--teacher", args.teacher, "--data", str(train),
                   "--out", str(run), "--freeze-encoder", "--student-decoder-layers", dec,
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
                   "--warmup", "5", "--save-every", "10", "--device", args.device,
                   "--teacher-cache", str(args.out / "teacher-cache.pt"), "--json", *CONFIGS[name]]
            print("$", " ".join(cmd[2:]), flush=True)
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-3000:], flush=True)
                return 1
            summary = json.loads(done.stdout)
            if memo is None:
                from whisper_kdq.models.refs import load_model

                memo = MemoEncoder(load_model(args.teacher, device=args.device).model.model.encoder)
            memo.load(MEMO_FILE)
            report = evaluate_student(summary["model"], test, memo, args.device)
            memo.save(MEMO_FILE)
            first, later = epoch_seconds(run, steps_per_epoch)
            wall = train_seconds(run)
            results[key] = {"cer_ja": report["languages"]["ja"]["cer"], "wer_en": report["languages"]["en"]["wer"],
                            "params": report["params"], "samples_per_s": args.steps * args.batch_size / wall,
                            "train_wall_s": wall, "first_epoch_s": first, "later_step_s": later}
            results_file.write_text(json.dumps(results, indent=2))
            print(key, results[key], flush=True)
    write_report(args, results, argv, steps_per_epoch)
    return 0


def epoch_cost(args) -> int:
    """One epoch, teacher work included (nothing cached beforehand), distillation vs plain fine-tuning."""
    enc, dec = args.epoch_cost.rstrip("f").split("+")
    # "6+2f": the teacher's encoder, frozen (its output cached, shared with the teacher); else the encoder trains.
    student = ["--freeze-encoder"] if args.epoch_cost.endswith("f") else ["--student-encoder-layers", enc]
    rows = [x for x in subset(args.corpus, args.ja, args.en, seed=0).read_text(encoding="utf-8").splitlines()]
    rows = rows[:args.epoch_cost_utts // 2] + rows[-(args.epoch_cost_utts // 2):]  # half ja, half en
    data = args.corpus / f"epoch-cost-{len(rows)}.jsonl"  # beside the corpus: audio paths are relative
    data.write_text("".join(r + "\n" for r in rows), encoding="utf-8")
    steps = len(rows) // args.batch_size
    out = {}
    for name in ("ce", "kd+hidden-restrained-dynamic"):
        run = args.out / f"epoch-cost-{args.epoch_cost}-{name}"
        shutil.rmtree(run, ignore_errors=True)  # timed from scratch
        cmd = [sys.executable, "-m", "whisper_kdq", "distill", "--teacher", args.teacher, "--data", str(data),
               "--out", str(run), *student, "--student-decoder-layers", dec, "--steps", str(steps),
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--warmup", "1", "--save-every", "1000",
               "--device", args.device, "--json", *CONFIGS[name]]
        print("$", " ".join(cmd[2:]), flush=True)
        summary, cpu = run_timed(cmd)
        out[name] = {"epoch_wall_s": epoch_seconds(run, steps)[0], "teacher_wall_s": summary["teacher_s"],
                     "process_cpu_s": cpu}
    a, b = out["kd+hidden-restrained-dynamic"], out["ce"]
    out["ratio_wall"] = a["epoch_wall_s"] / b["epoch_wall_s"]
    out["ratio_cpu"] = a["process_cpu_s"] / b["process_cpu_s"]  # whole process: loading and saving included
    (args.out / f"epoch-cost-{args.epoch_cost}.json").write_text(json.dumps(out, indent=2))
    print(json.dumps(out, indent=2))
    return 0


def write_report(args, results: dict, argv, steps_per_epoch: int) -> None:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    lines = [f"Machine: {platform.machine()}, {os.cpu_count()} cores, device {args.device}; "
             f"date {time.strftime('%Y-%m-%d')}; commit {commit.strip()}.",
             f"Command: `python benchmarks/distillation.py {' '.join(argv or sys.argv[1:])}`",
             f"Training: {args.ja} ja + {args.en} en utterances of the train split, {args.steps} steps of "
             f"{args.batch_size} ({steps_per_epoch} steps per epoch), lr {args.lr}; test split: 90 ja + 60 en.", "",
             "| student | losses | params M | CER ja % | WER en % | samples/s | train wall s | first epoch s |",
             "|---|---|---|---|---|---|---|---|"]
    for key, r in results.items():
        student, name = key.split(" ", 1)
        run = args.out / f"{student}-{name}"
        wall = train_seconds(run) if run.is_dir() else r["train_wall_s"]
        lines.append(f"| {student} | {name} | {r['params'] / 1e6:.1f} | {100 * r['cer_ja']:.2f} | {100 * r['wer_en']:.2f} "
                     f"| {args.steps * args.batch_size / wall:.2f} | {wall:.0f} | {r['first_epoch_s']:.0f} |")
    for cost in sorted(args.out.glob("epoch-cost-*.json")):
        c = json.loads(cost.read_text())
        lines.append(f"\n{cost.stem}: one epoch from scratch, distillation (CE+KD+hidden) / plain fine-tuning: "
                     f"{c['ratio_cpu']:.2f}x CPU seconds, {c['ratio_wall']:.2f}x wall.")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
