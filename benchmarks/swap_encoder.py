"""A packed student with another packed file's encoder (docs/BENCHMARKS.md, "An encoder trained at 30 s").

The decoder stage trains on a frozen encoder; an encoder trained further afterwards (`distill --encoder-only
--student FILE --qat-init packed`, e.g. at another window) can replace it without training the decoder again,
since both stages imitate the same teacher. Codes are copied, not re-quantized: the result holds `--model`'s
decoder and embedding codes and `--encoder-from`'s encoder codes exactly, packed by `--plan` (the plan both
were trained on: same specs). A weight whose spec the plan changes (a decoder matrix moved from 3 to 4 bits,
before a decoder stage trains it) is quantized anew from its dequantized values.

    python benchmarks/swap_encoder.py --model runs/…/rows-words/model.safetensors \\
        --encoder-from runs/…/encoder-30s/model.safetensors --plan runs/…/plan-rows-words.json --out runs/…/swapped.safetensors
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

ENCODER = "model.encoder."


def swap_encoder(model_file: Path, encoder_file: Path, plan, out: Path, *, force: bool = False) -> dict:
    """Write `out`: `model_file` with `encoder_file`'s encoder (weights and codes). Returns the size summary."""
    from whisper_kdq.errors import UserError
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.quant.checkpoint import save_packed
    from whisper_kdq.quant.reader import packed_codes

    target, source = load_model(str(model_file)), load_model(str(encoder_file))
    if source.model.config.encoder_layers != target.model.config.encoder_layers:
        raise UserError(f"{encoder_file} has {source.model.config.encoder_layers} encoder blocks, "
                        f"{model_file} {target.model.config.encoder_layers}")
    target.model.model.encoder.load_state_dict(source.model.model.encoder.state_dict())
    codes = {n: q for n, q in packed_codes(model_file).items() if not n.startswith(ENCODER)}
    codes.update({n: q for n, q in packed_codes(encoder_file).items() if n.startswith(ENCODER)})
    return save_packed(out, target.model, target.processor, plan, force=force,
                       quantized=_on_plan(codes, plan, target.model.state_dict()))


def _on_plan(codes: dict, plan, state: dict) -> dict:
    """The codes whose every stored part has the spec and shape `plan` gives it (the others are re-quantized)."""
    from whisper_kdq.quant.rows import stored_parts

    splits, keep = plan.splits(state), {}
    for name, spec in plan.resolve(state).items():
        if spec is None:
            continue
        parts = stored_parts(name, spec, tuple(state[name].shape), splits.get(name))
        if all(p in codes and codes[p].spec == pspec and tuple(codes[p].shape) == shape for p, pspec, shape in parts):
            keep.update({p: codes[p] for p, _, _ in parts})
    return keep


def main() -> None:
    from whisper_kdq.quant.plan import load_plan

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, required=True, help="packed student whose decoder and embedding stay")
    ap.add_argument("--encoder-from", type=Path, required=True, help="packed file whose encoder goes in")
    ap.add_argument("--plan", type=Path, required=True, help="the plan both files were packed by")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    summary = swap_encoder(args.model, args.encoder_from, load_plan(args.plan), args.out, force=args.force)
    print(json.dumps({"out": str(args.out), "file_bytes": summary["file_bytes"]}))


if __name__ == "__main__":
    main()
