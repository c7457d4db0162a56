"""A 10.5x plan that spends the token embedding's rare rows on the decoder (docs/BENCHMARKS.md, "Row splits").

From a guided plan (default: the 10.5x 2/3-bit plan on the full-range grid), keep the encoder as it is (so
a stage-1 encoder trained on that plan is reused), put the token embedding at `--cold-bits` except the rows
the calibration transcripts use (`--hot-bits`), every decoder matrix at `--decoder-bits`, then raise decoder
matrices to `--decoder-bits + 1` in order of their measured quantization loss per weight (the plan's
`selection` record) while the file stays within the base plan's size.

With `--encoder-from` (a stage-1 packed file trained on the base plan) it also writes `--student-out`: that
encoder, its codes as they are, with the teacher's float decoder and embedding quantized by the new plan,
the student of the decoder stage (`distill --student … --qat-init packed --freeze-encoder`).

    python benchmarks/row_split_plan.py --base runs/pipeline-w10-sel/plan-guided-linear-23-10.5x-full.json \\
        --calibration corpus/train-subset-ja570-en325.jsonl --out runs/pipeline-w10-sel/plan-rows-10.5x.json \\
        --encoder-from runs/…-full-encoder/model.safetensors --student-out runs/…/rows-start.safetensors
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

EMBEDDING = r"^model\.decoder\.embed_tokens\.weight$"
DECODER = r"^model\.decoder\.layers"
ENCODER = r"^model\.encoder\.layers"


def build(base: dict, rows: list[int], size_of, *, cold_bits: int, hot_bits: int, decoder_bits: int,
          encoder_bits: int | None = None, budget: int | None = None) -> dict:
    """The plan (a dict) and the sizes it was fitted to, recorded under `row_split`. `encoder_bits`: every
    encoder block matrix at these bits instead of the base plan's (then the encoder must be trained anew).
    `budget`: the file's bytes at most (default: the base plan's file)."""
    budget = size_of(base) if budget is None else budget
    plan = copy.deepcopy(base)
    replaced = (DECODER, EMBEDDING) + ((ENCODER,) if encoder_bits is not None else ())
    plan["rules"] = [r for r in plan["rules"] if not r["pattern"].startswith(replaced)]
    if encoder_bits is not None:
        plan["rules"].append({"pattern": ENCODER + r"\.", "bits": encoder_bits})
    plan["rules"] += [{"pattern": DECODER + r"\.", "bits": decoder_bits}, {"pattern": EMBEDDING, "bits": cold_bits}]
    plan["rows"] = [{"pattern": EMBEDDING, "bits": hot_bits, "rows": rows,
                     "note": "token rows of the calibration transcripts and the special tokens"}]
    units = [u for u in plan.get("selection", {}).get("units", []) if u["unit"].startswith("decoder.")]
    units.sort(key=lambda u: -u["quant_loss"] / u["params"])  # most output change per weight first
    raised = []
    for u in units:
        trial = copy.deepcopy(plan)
        trial["rules"].append({"pattern": u["pattern"], "bits": decoder_bits + 1})
        if size_of(trial) > budget:
            continue
        plan, raised = trial, raised + [u["unit"]]
    plan["row_split"] = {"base_bytes": budget, "bytes": size_of(plan), "rows": len(rows), "cold_bits": cold_bits,
                         "hot_bits": hot_bits, "decoder_bits": decoder_bits, "encoder_bits": encoder_bits, "raised": raised}
    return plan


def common_word_rows(tokenizer, language: str, n: int) -> set[int]:
    """Token rows of the `n` most frequent words of `language` (wordfreq's lists, from large general text, not
    our corpus), each as Whisper's text has it mid-sentence and capitalized (after a space where the language
    spaces its words)."""
    try:
        from wordfreq import top_n_list
    except ImportError:
        raise SystemExit("--common-words needs `pip install wordfreq` (extra: bench)") from None
    from whisper_kdq.distill.data import NO_SPACE_LANGUAGES

    space = "" if language in NO_SPACE_LANGUAGES else " "
    rows: set[int] = set()
    for word in top_n_list(language, n):
        for form in {word, word[:1].upper() + word[1:]}:
            rows.update(tokenizer.encode(space + form, add_special_tokens=False))
    return rows


def compose_student(teacher, encoder_from: Path, plan, out: Path) -> dict:
    """The teacher with `encoder_from`'s trained encoder, written packed by `plan`: the encoder's codes are
    copied (its spec must be the plan's), everything else is quantized from the teacher's float weights."""
    import copy as _copy

    from whisper_kdq.quant.checkpoint import save_packed
    from whisper_kdq.quant.reader import load_packed, packed_codes

    model = _copy.deepcopy(teacher.model)
    model.model.encoder.load_state_dict(load_packed(encoder_from).model.model.encoder.state_dict())
    codes = {n: q for n, q in packed_codes(encoder_from).items() if n.startswith("model.encoder.")}
    return save_packed(out, model, teacher.processor, plan, force=True, quantized=codes)


def plan_for(teacher, base: dict, calibration: Path, *, words: dict[str, int] | None = None, first_tokens: int = 0,
             ratio: float | None = None, cold_bits: int = 2, hot_bits: int = 4, decoder_bits: int = 3,
             encoder_bits: int | None = None) -> dict:
    """`build` on the hot rows of `calibration`'s transcripts, the token ids below `first_tokens` and the tokens of
    each language's N most frequent `words`, fitted to `4 x params / ratio` bytes (default: the base plan's file).
    The fitted sizes are recorded under the plan's `selection.row_split`."""
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.quant.checkpoint import predict_packed
    from whisper_kdq.quant.plan import plan_from_dict
    from whisper_kdq.quant.rows import token_rows

    tokenizer = teacher.processor.tokenizer
    rows = set(token_rows(tokenizer, load_dataset(calibration, check_audio=False).utterances))
    rows |= set(range(first_tokens))
    for language, n in (words or {}).items():
        rows |= common_word_rows(tokenizer, language, n)

    def size_of(plan: dict) -> int:
        clean = {k: v for k, v in plan.items() if k != "row_split"}
        return predict_packed(teacher.model, plan_from_dict(clean), teacher.processor)["file_bytes"]

    plan = build(base, sorted(rows), size_of, cold_bits=cold_bits, hot_bits=hot_bits, decoder_bits=decoder_bits,
                 encoder_bits=encoder_bits, budget=None if ratio is None else int(4 * teacher.params / ratio))
    plan["selection"] = {**plan.get("selection", {}), "row_split": plan.pop("row_split")}
    return plan


def main() -> None:
    from whisper_kdq.fileio import write_text_atomic
    from whisper_kdq.models.refs import load_model

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--calibration", type=Path, required=True, help="manifest whose transcripts pick the rows")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--teacher", default="base")
    ap.add_argument("--cold-bits", type=int, default=2)
    ap.add_argument("--hot-bits", type=int, default=4)
    ap.add_argument("--decoder-bits", type=int, default=3)
    ap.add_argument("--encoder-bits", type=int, help="every encoder block matrix at these bits (default: the base plan's)")
    ap.add_argument("--first-tokens", type=int, default=0,
                    help="token ids below N join the hot rows too: the tokenizer's earliest merges, its most frequent "
                         "tokens, for words the calibration transcripts lack")
    ap.add_argument("--common-words", action="append", default=[], metavar="LANG:N",
                    help="the tokens of LANG's N most frequent words (wordfreq) join the hot rows (repeatable)")
    ap.add_argument("--ratio", type=float, help="fit the file to 4 x params / RATIO bytes (default: the base plan's size)")
    ap.add_argument("--encoder-from", type=Path, help="stage-1 packed file whose encoder the student keeps")
    ap.add_argument("--student-out", type=Path, help="where the composed student goes (with --encoder-from)")
    args = ap.parse_args()
    teacher = load_model(args.teacher)
    words = {}
    for item in args.common_words:
        language, _, n = item.partition(":")
        words[language] = int(n)
    plan = plan_for(teacher, json.loads(args.base.read_text()), args.calibration, words=words,
                    first_tokens=args.first_tokens, ratio=args.ratio, cold_bits=args.cold_bits, hot_bits=args.hot_bits,
                    decoder_bits=args.decoder_bits, encoder_bits=args.encoder_bits)
    info = plan["selection"]["row_split"]
    write_text_atomic(args.out, json.dumps(plan, indent=2) + "\n")
    print(json.dumps({"out": str(args.out), **{k: v for k, v in info.items()},
                      "ratio_vs_fp32": 4 * teacher.params / info["bytes"]}))
    if args.encoder_from is not None:
        from whisper_kdq.quant.plan import load_plan

        summary = compose_student(teacher, args.encoder_from, load_plan(args.out), args.student_out)
        print(json.dumps({"student": str(args.student_out), "file_bytes": summary["file_bytes"]}))


if __name__ == "__main__":
    main()
