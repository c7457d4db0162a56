"""Distillation vs plain fine-tuning on the synthesized corpus, with the whisper-base teacher.

    python benchmarks/distillation.py [--corpus corpus] [--out runs/distill-bench] [--steps 120]
        [--ja 150 --en 90] [--decoder-layers 2] [--configs ce,kd,kd+hidden-restrained-dynamic,...]

The student is cut from the teacher: its whole encoder (frozen, output cached) and 2 of the 6
decoder blocks (first and last). Every configuration trains on the same utterances for the same
steps; each is evaluated on the test split. Writes results.json and results.md in --out; re-running
resumes unfinished runs and skips finished ones.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {
    "kd+hidden-restrained-dynamic": ["--kd", "1", "--hidden", "1", "--matching", "restrained-dynamic"],
    "ce": ["--kd", "0"],
    "kd": ["--kd", "1"],
    "kd+hidden-static": ["--kd", "1", "--hidden", "1", "--matching", "static"],
    "kd+hidden-dynamic": ["--kd", "1", "--hidden", "1", "--matching", "dynamic"],
}


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "distill-bench")
    p.add_argument("--teacher", default="base")
    p.add_argument("--steps", type=int, default=120)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--ja", type=int, default=150)
    p.add_argument("--en", type=int, default=90)
    p.add_argument("--decoder-layers", type=int, default=2)
    p.add_argument("--configs", default=",".join(CONFIGS))
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    train = subset(args.corpus, args.ja, args.en, seed=0)
    results_file = args.out / "results.json"
    results = json.loads(results_file.read_text()) if results_file.is_file() else {}
    for name in args.configs.split(","):
        if name in results:
            continue
        run = args.out / name
        cmd = [sys.executable, "-m", "whisper_kdq", "distill", "--teacher", args.teacher, "--data", str(train),
               "--out", str(run), "--freeze-encoder", "--student-decoder-layers", str(args.decoder_layers),
               "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--lr", str(args.lr),
               "--warmup", "10", "--save-every", "40", "--device", args.device,
               "--teacher-cache", str(args.out / "teacher-cache.pt"), "--json", *CONFIGS[name]]
        print("$", " ".join(cmd[2:]), flush=True)
        started = time.time()
        summary = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
        ev = subprocess.run([sys.executable, "-m", "whisper_kdq", "evaluate", "--model", summary["model"], "--data",
                             str(args.corpus / "manifest.jsonl"), "--split", "test", "--json", "--device", args.device],
                            check=True, capture_output=True, text=True)
        model = json.loads(ev.stdout)["models"][0]
        results[name] = {"cer_ja": model["languages"]["ja"]["cer"], "wer_en": model["languages"]["en"]["wer"],
                         "samples_per_s": summary["samples_per_s"], "train_wall_s": summary["wall_s"],
                         "teacher_s": summary["teacher_s"], "rtf": model["rtf"], "params": model["params"],
                         "total_s": time.time() - started}
        results_file.write_text(json.dumps(results, indent=2))
        print(name, results[name], flush=True)
    meta = {"machine": f"{platform.machine()} {platform.processor() or ''}, {__import__('os').cpu_count()} cores",
            "date": time.strftime("%Y-%m-%d"), "commit": subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                                                                         capture_output=True, text=True).stdout.strip(),
            "command": "python benchmarks/distillation.py " + " ".join(argv or sys.argv[1:]),
            "train_utterances": args.ja + args.en, "steps": args.steps, "batch_size": args.batch_size}
    lines = [f"Machine: {meta['machine']}; date {meta['date']}; commit {meta['commit']}.",
             f"Command: `{meta['command']}`", "",
             "| run | CER ja % | WER en % | samples/s | train wall s |", "|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {100 * r['cer_ja']:.2f} | {100 * r['wer_en']:.2f} | {r['samples_per_s']:.2f} | {r['train_wall_s']:.0f} |")
    (args.out / "results.md").write_text("\n".join(lines) + "\n")
    (args.out / "meta.json").write_text(json.dumps(meta, indent=2))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
