"""The README's main job on the embedded default: whisper-base teacher, a small synthesized corpus.

    python benchmarks/demo.py [--out demo] [--ja 60 --en 40]

Synthesizes a small Japanese + English corpus (resumable), then evaluates the whisper-base teacher
on its held-out test split with `whisper-kdq evaluate` and prints the table. Everything is offline.
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
    args = parser.parse_args(argv)
    try:
        manifest = synthesize_corpus(args.out / "corpus", ja_limit=args.ja, en_limit=args.en)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    # The CLI itself, exactly as a user runs it: its table goes to the terminal.
    command = [sys.executable, "-m", "whisper_kdq", "evaluate", "--model", "base", "--data", str(manifest),
               "--split", "test"]
    print("$ whisper-kdq " + " ".join(command[3:]), flush=True)
    return subprocess.call(command)


if __name__ == "__main__":
    sys.exit(main())
