"""Weight error of the uniform grids on real whisper-base, at equal or stated bytes: restricted symmetric
(levels -q..q, the default), full range (all 2**bits codes, signed scale: q4_0's grid, the same bytes) and
asymmetric (an fp16 offset per group: +16/group_size bits per weight).

    python benchmarks/grid_error.py [--model base] [--matrices REGEX] [--out benchmarks/results/grid-DATE]

For every weight a plan quantizes (every linear and conv matrix and the token embedding), with the
default weight-MSE clipping search: the relative squared error sum((q - w)**2) / sum(w**2), summed over
the matrices of each component. Prints a markdown table; writes grid_error.json and grid_error.md."""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import re
from pathlib import Path

import torch

from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.plan import candidate_tensors
from whisper_kdq.quant.schemes import QuantSpec, dequantize, quantize

GRIDS = {"restricted": dict(symmetric=True), "full range": dict(symmetric=True, full_range=True),
         "asymmetric": dict(symmetric=False)}
SETTINGS = [(2, 128), (3, 128), (4, 32)]


def component(name: str) -> str:
    if "embed_tokens" in name:
        return "embedding"
    return "encoder" if ".encoder." in name else "decoder"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="base")
    p.add_argument("--matrices", default=None, help="only the weights whose name matches this regex")
    p.add_argument("--out", type=Path, default=Path(f"benchmarks/results/grid-{datetime.date.today()}"))
    args = p.parse_args(argv)
    state = load_model(args.model).model.state_dict()
    names = [n for n in candidate_tensors(state) if "embed_positions" not in n
             and (args.matrices is None or re.search(args.matrices, n))]
    rows = []
    for bits, group in SETTINGS:
        for grid, kw in GRIDS.items():
            spec = QuantSpec("uniform", bits, "group", group, **kw)
            err: dict[str, float] = {}
            energy: dict[str, float] = {}
            per_matrix: dict[str, float] = {}
            for name in names:
                w = state[name].float()
                c = component(name)
                e, n = ((dequantize(quantize(w, spec)) - w) ** 2).sum().item(), (w ** 2).sum().item()
                err[c], energy[c] = err.get(c, 0.0) + e, energy.get(c, 0.0) + n
                per_matrix[name] = e / n
            total = sum(err.values()) / sum(energy.values())
            extra = 16 / group * (2 if grid == "asymmetric" else 1)
            rows.append({"bits": bits, "group_size": group, "grid": grid, "bits_per_weight": bits + extra,
                         "relative_error": {**{c: err[c] / energy[c] for c in err}, "all": total},
                         "per_matrix": per_matrix})
            print(f"{bits}-bit g{group} {grid}: {total:.4f}", flush=True)
    parts = [c for c in ("encoder", "decoder", "embedding") if c in rows[0]["relative_error"]]
    lines = [f"| bits, group | grid | bits/weight | {' | '.join(parts)} | all |", "|---" * (len(parts) + 4) + "|"]
    for r in rows:
        e = r["relative_error"]
        lines.append(f"| {r['bits']}, g{r['group_size']} | {r['grid']} | {r['bits_per_weight']:.3f} | "
                     + " | ".join(f"{e[c]:.4f}" for c in parts) + f" | {e['all']:.4f} |")
    table = "\n".join(lines)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {"model": args.model, "matrices": args.matrices, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": f"{platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads".strip()}
    (args.out / "grid_error.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (args.out / "grid_error.md").write_text(f"{meta}\n\n{table}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
