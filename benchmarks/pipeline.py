"""The whole compress-and-compare pipeline on the synthesized corpus: teacher whisper-base fp32 against
post-training quantization, distilled students, joint distillation + quantization-aware training,
and guided vs random vs all-layers selection at the same size.

    python benchmarks/pipeline.py [--corpus corpus] [--out runs/pipeline] [--steps 200] [--ja 300 --en 180]
                                  [--rows NAME,...|all] [--qat-lr 5e-5] [--device auto]

Every row runs the `whisper-kdq` CLI exactly as a user would, and is kept in results.json as soon as
it is done: re-running skips finished rows and resumes unfinished training runs. Writes
results.json (with machine, date, commit), results.md and pareto.png in --out.

The defaults are sized to finish the issue's rows in under 2 hours on 2 CPU cores (97.7 min from scratch,
2026-11-30, docs/BENCHMARKS.md; the students are far from trained at this budget): 480 training
utterances (300 ja + 180 en, a seeded subset of the train split) and 200 steps of 8 per student. Most of
a student row is not its steps but running a (fake-quantized) encoder once over every training clip
(~0.55 s per clip here) and decoding the test split; the teacher's encoder output is shared by the
float students through the teacher cache. The studies on the whole teacher (`Pipeline.studies`, in
pipeline_studies.py; run by name or with --rows all) were measured with `--steps 300 --ja 570 --en 325` (the whole train split; ~30 min
per KD+QAT row). On a GPU raise --steps, --ja/--en and --batch-size. `--train-window S` trains every
student at an S-second audio window (`distill --window`; the corpus's clips last at most 6 s), which
cuts the encoder and cross-attention work of training; the test split is still decoded at 30 s.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from distillation import subset  # noqa: E402
from pipeline_studies import Studies  # noqa: E402

FP32_TEACHER_BYTES = 4 * 72_593_920  # whisper-base parameters, fp32


class Pipeline(Studies):
    def __init__(self, args) -> None:
        self.a = args
        self.out: Path = args.out
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_file = self.out / "results.json"
        self.results = json.loads(self.results_file.read_text())["rows"] if self.results_file.is_file() else {}
        self.manifest = args.corpus / "manifest.jsonl"
        self.train = subset(args.corpus, args.ja, args.en, seed=0)

    # ------------------------------------------------------------------ running the CLI
    def cli(self, *args: str) -> dict:
        cmd = [sys.executable, "-m", "whisper_kdq", *args, "--json"]
        print("$ whisper-kdq " + " ".join(args), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"failed ({proc.returncode}): {' '.join(args)}\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout)

    def evaluate(self, model: str, engine: str = "transformers") -> dict:
        args = ["evaluate", "--model", model, "--data", str(self.manifest), "--split", "test", "--device", self.a.device,
                "--engine", engine]
        if self.a.test_limit:
            args += ["--limit", str(self.a.test_limit)]
        if self.a.fallback:
            args.append("--fallback")
        # Every hypothesis is kept: the report's intervals against the teacher pair them clip by clip.
        predictions = self.out / "predictions" / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', model).strip('_')}-{engine}.jsonl"
        predictions.parent.mkdir(parents=True, exist_ok=True)
        m = self.cli(*args, "--predictions", str(predictions), "--force")["models"][0]
        return {"model": model, "size_bytes": m["size_bytes"], "params": m["params"], "cer_ja": m["languages"]["ja"]["cer"],
                "wer_en": m["languages"]["en"]["wer"], f"rtf_{engine}": m["rtf"], "predictions": str(predictions)}

    def quantize(self, model: str, name: str, *flags: str) -> str:
        target = self.out / f"{name}.safetensors"
        if not target.is_file():
            self.cli("quantize", "--model", model, "--out", str(target), *flags)
        return str(target)

    def distill(self, name: str, *flags: str, decoder_layers: int | None = None, lr: float | None = None,
                student: str | None = None) -> tuple[str, float]:
        """A student with the teacher's encoder frozen and a cut of its decoder, or `student` (a model reference)
        with its own encoder frozen."""
        a = self.a
        who = ["--student", student] if student else ["--student-decoder-layers", str(decoder_layers or a.decoder_layers)]
        summary = self.cli("distill", "--teacher", "base", "--data", str(self.train), "--out", str(self.out / name),
                           "--freeze-encoder", *who,
                           "--steps", str(a.steps), "--batch-size", str(a.batch_size), "--lr", str(lr or a.lr),
                           "--warmup", str(max(1, a.steps // 4)),
                           "--save-every", str(max(1, a.steps // 2)), "--device", a.device,
                           "--teacher-cache", str(self.out / f"teacher-cache{self._window_tag()}.pt"),
                           *(["--window", f"{a.train_window:g}"] if a.train_window else []),
                           *(["--qat-init", a.qat_init] if "--plan" in flags and a.qat_init != "rtn" and "--qat-init" not in flags
                             else []), *flags)
        return summary["model"], summary["wall_s"]

    def _window_tag(self) -> str:
        """The teacher's outputs differ with the training window: one cache file per window."""
        return f"-w{self.a.train_window:g}" if self.a.train_window else ""

    def plan(self, name: str, *flags: str, model: str | None = None) -> str:
        """select-layers on 16 dev clips (8 ja + 8 en); the student's blocks are matched to the teacher's unless
        `model` is given."""
        target = self.out / f"plan-{name}.json"
        if not target.is_file():
            who = ["--model", model] if model else ["--model", self.student_float(), "--teacher", "base"]
            self.cli("select-layers", *who, "--calibration", str(self.manifest), "--split", "dev", "--limit", "16",
                     "--out", str(target), "--device", self.a.device, *flags)
        return str(target)

    def _q4_0_plan(self, strategy: str, granularity: str = "block", seed: int = 0) -> str:
        """4-bit g128 units with some raised to 6 bits, at the size of the teacher's RTN 4-bit g32 file."""
        mb = self.results.get("teacher RTN 4-bit g32 (q4_0 size)", {}).get("size_bytes", 45_122_748) / 1e6
        return self.plan(self._q4_0_name(strategy, granularity, seed), "--strategy", strategy, "--low-bits", "4", "--high-bits", "6", "--group-size", "128",
                         "--target-mb", f"{mb:.4f}", "--granularity", granularity, "--seed", str(seed), model="base")

    @staticmethod
    def _q4_0_name(strategy: str, granularity: str, seed: int) -> str:
        """File stem of a q4_0-size selection: its plan is `plan-<stem>.json`, its checkpoint `<stem>.safetensors`."""
        return f"teacher-{strategy}{'' if granularity == 'block' else '-' + granularity}{f'-s{seed}' if seed else ''}-q4_0"

    def _selection_rows(self) -> dict:
        """Guided vs random selection on the teacher itself (no distillation: the quantization losses alone
        guide), at the q4_0 size, post-training; per block and per weight matrix, random with three seeds."""
        rows = {}
        for granularity, label in (("block", ""), ("linear", " per-matrix")):
            for strategy, seeds in (("guided", [0]), ("random", [0, 1, 2])):
                for seed in seeds:
                    name = f"teacher {strategy}{label} 4/6-bit PTQ (q4_0 size{f'; seed {seed}' if seed else ''})"
                    rows[name] = lambda s=strategy, g=granularity, k=seed: (self.evaluate(self.quantize(
                        "base", self._q4_0_name(s, g, k), "--plan", self._q4_0_plan(s, g, k))), 0.0)
        return rows

    def student_float(self) -> str:
        return str(self.out / "student-kd" / "model")

    # ------------------------------------------------------------------ rows
    def rows(self) -> dict:
        """Every row, in run order: the issue's teacher rows, the whole-teacher studies, the students."""
        return {**self._teacher_rows(), **self.studies(), **self._student_rows()}

    def _teacher_rows(self) -> dict:
        return {
            "teacher fp32": lambda: (self.evaluate("base"), 0.0),
            "teacher RTN 8-bit": lambda: (self.evaluate(self.quantize("base", "teacher-u8", "--bits", "8")), 0.0),
            "teacher RTN 4-bit g128": lambda: (self.evaluate(self.quantize("base", "teacher-u4g128", "--bits", "4")), 0.0),
            "teacher RTN 4-bit g32 (q4_0 size)": lambda: (self.evaluate(self.quantize(
                "base", "teacher-u4g32", "--bits", "4", "--group-size", "32")), 0.0),
            "teacher RTN 4-bit per-channel": lambda: (self.evaluate(self.quantize(
                "base", "teacher-u4c", "--bits", "4", "--group-size", "channel")), 0.0),
            "teacher APoT 4-bit g128": lambda: (self.evaluate(self.quantize(
                "base", "teacher-a4g128", "--bits", "4", "--scheme", "apot")), 0.0),
        }

    def _student_rows(self) -> dict:
        size = ["--target-ratio", str(self.a.target_ratio), "--ratio-of", "base", "--low-bits", "3", "--high-bits", "4"]
        return {
            "student CE only": lambda: self._trained("student-ce", "--kd", "0"),
            "student KD": lambda: self._trained("student-kd", "--kd", "1", "--hidden", "1"),
            "student KD + PTQ 4-bit g128": lambda: (self.evaluate(self.quantize(
                self.student_float(), "student-kd-u4", "--bits", "4")), 0.0),
            "student KD+QAT uniform 4-bit": lambda: self._trained(
                "student-qat-u4", "--kd", "1", "--hidden", "1", "--plan", self._uniform_plan("uniform", 4)),
            "student KD+QAT APoT 4-bit": lambda: self._trained(
                "student-qat-a4", "--kd", "1", "--hidden", "1", "--plan", self._uniform_plan("apot", 4)),
            "guided selection 3/4-bit KD+QAT": lambda: self._trained(
                "student-guided", "--kd", "1", "--hidden", "1", "--plan", self.plan("guided", *size)),
            "random selection 3/4-bit KD+QAT": lambda: self._trained(
                "student-random", "--kd", "1", "--hidden", "1", "--plan", self.plan("random", "--strategy", "random", *size)),
            "all layers 3-bit KD+QAT": lambda: self._trained(
                "student-all3", "--kd", "1", "--hidden", "1", "--plan", self.plan(
                    "all", "--strategy", "all", "--low-bits", "3", "--high-bits", "4")),
            "CTranslate2 export of the best compressed model": self._ct2_best,
            "CTranslate2 int8 export of the best compressed model": lambda: self._ct2_best("int8"),
        }

    def _trained(self, name: str, *flags: str, **kw) -> tuple[dict, float]:
        model, wall = self.distill(name, *flags, **kw)
        return self.evaluate(model), wall

    def _teacher_qat(self, name: str, bits: int, *plan_flags: str, ce: float = 0.0, plan: str | None = None,
                     freeze_embedding: bool = False, select_on_dev: bool = False,
                     qat_init: str = "rtn") -> tuple[dict, float]:
        """The whole teacher decoder trained quantization-aware to mimic the teacher (logits + block outputs;
        `ce` > 0 adds cross-entropy on the references), the encoder quantized post-training and frozen; by a
        uniform plan of `bits` or by `plan`. `select_on_dev`: evaluate on the dev split every third of the run
        and keep the best checkpoint."""
        dev = ["--eval-data", str(self.manifest), "--eval-split", "dev", "--eval-every", str(max(1, self.a.steps // 3))]
        return self._trained(name, "--ce", str(ce), "--kd", "1", "--hidden", "1", "--matching", "static",
                             "--plan", plan or self._uniform_plan("uniform", bits, *plan_flags),
                             *(["--freeze-embedding"] if freeze_embedding else []), *(dev if select_on_dev else []),
                             *(["--qat-init", qat_init] if qat_init != "rtn" else []), decoder_layers=6, lr=self.a.qat_lr)

    def _uniform_plan(self, scheme: str, bits: int, *flags: str) -> str:
        target = self.out / f"plan-{scheme}{bits}{re.sub(r'[^A-Za-z0-9_.-]', '', ''.join(flags).replace('--', '-'))}.json"
        if not target.is_file():
            self.cli("quantize", "--model", "base", "--bits", str(bits), "--scheme", scheme, "--dry-run",
                     "--save-plan", str(target), *flags)
        return str(target)

    def _ct2_best(self, quantization: str = "auto") -> tuple[dict, float]:
        """The best compressed row (ratio >= 5, mean error relative to the teacher) exported to CTranslate2:
        `auto` keeps its weights exactly (float16 unless they are int8 per-row); `int8` re-quantizes them to
        CTranslate2's int8, the smallest file it runs."""
        teacher = self.results["teacher fp32"]
        compressed = {k: r for k, r in self.results.items() if r.get("model", "").endswith(".safetensors")
                      and r["ratio"] >= 5.0}
        best = min(compressed, key=lambda k: compressed[k]["cer_ja"] / teacher["cer_ja"] + compressed[k]["wer_en"] / teacher["wer_en"])
        target = self.out / ("best-ct2" if quantization == "auto" else f"best-ct2-{quantization}")
        if not target.is_dir():
            self.cli("export", "--model", self.results[best]["model"], "--format", "ct2", "--ct2-quantization",
                     quantization, "--out", str(target))
        row = self.evaluate(str(target), engine="ctranslate2")
        row["source_row"] = best
        return row, 0.0

    # ------------------------------------------------------------------ bookkeeping
    def run(self, names: list[str]) -> None:
        rows = self.rows()
        for name in names:
            if name in self.results:
                continue
            started = time.time()
            row, train_s = rows[name]()
            row.update(train_wall_s=train_s, total_s=time.time() - started, date=time.strftime("%Y-%m-%d"),
                       commit=self._commit())
            if name == "teacher fp32":  # evaluated from the fp16 PyPI file, compared as the fp32 model it loads as
                row["size_bytes"] = 4 * row["params"]
            row["ratio"] = FP32_TEACHER_BYTES / row["size_bytes"]
            row["bits_per_weight"] = 8 * row["size_bytes"] / row["params"]
            self.results[name] = row
            self.save()
            print(f"{name}: CER ja {100 * row['cer_ja']:.2f}  WER en {100 * row['wer_en']:.2f}  "
                  f"{row['size_bytes'] / 1e6:.1f} MB ({row['ratio']:.2f}x)", flush=True)

    def _test_clips(self) -> dict[str, int]:
        """Test clips per language as evaluated (a corpus made with --wide-test has five times as many)."""
        rows = [json.loads(line) for line in self.manifest.read_text(encoding="utf-8").splitlines() if line.strip()]
        test = [r["language"] for r in rows if r.get("split") == "test"][: self.a.test_limit or None]
        return {lang: test.count(lang) for lang in sorted(set(test))}

    @staticmethod
    def _commit() -> str:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    def save(self) -> None:
        from report import write_report

        meta = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
                "date": time.strftime("%Y-%m-%d"), "command": "python benchmarks/pipeline.py " + " ".join(sys.argv[1:]),
                "commit": self._commit(), "test_clips": self._test_clips(),
                "settings": {k: str(v) for k, v in vars(self.a).items()}}
        self.results_file.write_text(json.dumps({"meta": meta, "rows": self.results}, indent=2))
        write_report(self.out, meta, self.results)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--corpus", type=Path, default=ROOT / "corpus")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "pipeline")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--ja", type=int, default=300)
    p.add_argument("--en", type=int, default=180)
    p.add_argument("--decoder-layers", type=int, default=2)
    p.add_argument("--qat-lr", type=float, default=5e-5, help="lr of the whole-decoder KD+QAT row (starts from the teacher)")
    p.add_argument("--qat-init", default="rtn", choices=["rtn", "gptq"],
                   help="starting codes of every quantization-aware row (distill --qat-init)")
    p.add_argument("--target-ratio", type=float, default=10.5)
    p.add_argument("--encoder-steps", type=int, default=400, help="steps of the encoder regression rows")
    p.add_argument("--encoder-lr", type=float, default=2e-4, help="lr of the encoder regression rows")
    p.add_argument("--test-limit", type=int, default=None, help="evaluate on the first N test clips only")
    p.add_argument("--fallback", action="store_true",
                   help="decode with `evaluate --fallback`, both engines (use a fresh --out: finished rows are kept)")
    p.add_argument("--rows", default=None,
                   help="comma-separated row names, or 'all' (default: the issue's rows, without the extra teacher studies)")
    p.add_argument("--train-window", type=float, default=None,
                   help="train every student reading S-second audio windows (distill --window; every training clip must "
                        "fit); evaluation stays at Whisper's 30 s")
    p.add_argument("--device", default="auto")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    pipeline = Pipeline(args)
    if args.rows is None:
        names = [n for n in pipeline.rows() if n not in pipeline.studies()]
    elif args.rows.strip() == "all":
        names = list(pipeline.rows())
    else:
        names = [n.strip() for n in args.rows.split(",")]
    unknown = [n for n in names if n not in pipeline.rows()]
    if unknown:
        print(f"error: unknown row {unknown[0]!r}", file=sys.stderr)
        return 2
    pipeline.run(names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
