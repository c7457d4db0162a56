"""Relative error change of models against a base, with 95 % paired-bootstrap intervals, from prediction files.

`whisper-kdq evaluate --predictions FILE` writes every hypothesis beside its reference; this compares files
of earlier runs without decoding again (evaluate/compare.py: the same clips matched by id, each language's
headline rate, CER ja / WER en).

    python benchmarks/significance.py --base logs/preds/teacher-w30.jsonl logs/preds/words-w30.jsonl [...]

`--ids REGEX` keeps the utterances whose id matches (Python `re.search`): on a corpus made with `--wide-test`,
`--ids 'test-[0-9]'` is the original 90 / 60-clip test split, `--ids 'test-w'` the added clips.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing


def read_predictions(path: Path, ids: str | None = None) -> list[dict]:
    """The rows of one model's prediction file (a file of several models is refused: say which to take),
    only those whose id matches the regular expression `ids` where given."""
    rows = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    models = {row.get("model") for row in rows}
    if len(models) > 1:
        raise SystemExit(f"{path} holds the predictions of {len(models)} models; write one file per model")
    if ids is not None:
        rows = [row for row in rows if re.search(ids, str(row.get("id", "")))]
        if not rows:
            raise SystemExit(f"{path}: no utterance id matches --ids {ids!r}")
    return rows


def main() -> None:
    from whisper_kdq.evaluate.compare import compare_predictions

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True, help="predictions of the reference model (the teacher)")
    ap.add_argument("others", type=Path, nargs="+", help="predictions of the models to compare with it")
    ap.add_argument("--rounds", type=int, default=2000)
    ap.add_argument("--ids", help="keep only utterances whose id matches this regular expression")
    ap.add_argument("--json", action="store_true", help="one JSON object instead of the table")
    args = ap.parse_args()
    if args.ids is not None:
        try:
            re.compile(args.ids)
        except re.error as exc:
            raise SystemExit(f"--ids {args.ids!r}: not a regular expression ({exc})") from None
    base = read_predictions(args.base, args.ids)
    result = {}
    for p in args.others:
        try:
            changes = compare_predictions(base, read_predictions(p, args.ids), args.rounds)
        except ValueError as exc:  # e.g. a language-filtered run against a whole split: say so, no traceback
            raise SystemExit(f"{p} against {args.base}: {exc} (--ids REGEX compares on a common subset)") from None
        result[str(p)] = {lang: c.as_dict() for lang, c in changes.items()}
    if args.json:
        print(json.dumps({"base": str(args.base), "ids": args.ids, "models": result}, indent=2))
        return
    for path, changes in result.items():
        for lang, c in changes.items():
            ci = "-" if c["ci95"] is None else f"[{100 * c['ci95'][0]:+.1f}, {100 * c['ci95'][1]:+.1f}]"
            rel = "-" if c["relative"] is None else f"{100 * c['relative']:+.1f} %"
            print(f"{path}  {lang} {c['metric'].upper()} {100 * c['base']:.2f} -> {100 * c['other']:.2f} %  "
                  f"{rel} {ci}  ({c['n']} utterances)")


if __name__ == "__main__":
    main()
