"""The README's main job on the embedded default: whisper-base teacher, a small synthesized corpus.

    python benchmarks/demo.py [--out demo] [--ja 60 --en 40] [--steps 12]

Synthesizes a small Japanese + English corpus (resumable), then runs a shortened version of the
benchmark pipeline (benchmarks/pipeline.py) on it — the teacher, its 8-bit and 4-bit post-training
quantizations, a distilled student, and a distilled + quantization-aware student with guided
layer selection — and prints the comparison table. Everything is offline; re-running resumes.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from whisper_kdq.data.synth import synthesize_corpus  # noqa: E402
from whisper_kdq.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "demo", help="working directory (default: demo/)")
    parser.add_argument("--ja", type=int, default=60, help="Japanese sentences to synthesize")
    parser.add_argument("--en", type=int, default=40, help="English sentences to synthesize")
    parser.add_argument("--steps", type=int, default=12, help="training steps per student")
    args = parser.parse_args(argv)
    try:
        manifest = synthesize_corpus(args.out / "corpus", ja_limit=args.ja, en_limit=args.en)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    rows = ["teacher fp32", "teacher RTN 8-bit", "teacher RTN 4-bit g128", "student KD",
            "student KD+QAT uniform 4-bit", "guided selection 3/4-bit KD+QAT"]
    command = [sys.executable, str(ROOT / "benchmarks" / "pipeline.py"), "--corpus", str(manifest.parent),
               "--out", str(args.out / "pipeline"), "--steps", str(args.steps), "--ja", str(args.ja), "--en", str(args.en),
               "--rows", ",".join(rows)]
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
