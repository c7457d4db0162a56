"""Reproduce the table of docs/QUANTIZATION.md: post-training quantization of whisper-base.

    python benchmarks/quantization.py --manifest corpus/manifest.jsonl --split test --out benchmarks/results

Each configuration is quantized to a packed checkpoint, re-loaded from the file (so the numbers are
those of the artefact) and evaluated; results are appended to quantization.json as they come, and
quantization_table.md is re-rendered after every row. `--only NAME ...` runs a subset.

The `gptq-*` rows are GPTQ on the same grids (`quantize --method gptq`), calibrated on
`--calibration-clips` clips of the `--calibration-split` split (train: never the evaluated one); the
calibration statistics are computed once per run and shared by those rows.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from whisper_kdq.data.manifest import load_dataset
from whisper_kdq.evaluate import evaluate_model
from whisper_kdq.export import export_model
from whisper_kdq.models.refs import load_model
from whisper_kdq.quant.calibrate import input_hessians
from whisper_kdq.quant.checkpoint import save_packed
from whisper_kdq.quant.gptq import gptq_targets, gptq_tensors, linear_weights
from whisper_kdq.quant.plan import plan_from_options

# name -> plan_from_options kwargs; "embedding": 0 keeps the token embedding float.
CONFIGS: dict[str, dict] = {
    "uniform8-channel": dict(bits=8, scheme="uniform", granularity="per-channel"),
    "uniform4-g128": dict(bits=4, scheme="uniform", group_size=128),
    "apot4-g128": dict(bits=4, scheme="apot", group_size=128),
    "uniform6-g128": dict(bits=6, scheme="uniform", group_size=128),
    "apot6-g128": dict(bits=6, scheme="apot", group_size=128),
    "uniform3-g128": dict(bits=3, scheme="uniform", group_size=128),
    "apot3-g128": dict(bits=3, scheme="apot", group_size=128),
    "uniform4-channel": dict(bits=4, scheme="uniform", granularity="per-channel"),
    "apot4-channel": dict(bits=4, scheme="apot", granularity="per-channel"),
    "uniform4-g128-embfloat": dict(bits=4, scheme="uniform", group_size=128, component_bits={"embedding": 0}),
    "apot4-g128-embfloat": dict(bits=4, scheme="apot", group_size=128, component_bits={"embedding": 0}),
    "uniform8-g128": dict(bits=8, scheme="uniform", group_size=128),
    "apot8-g128": dict(bits=8, scheme="apot", group_size=128),
    # GPTQ (error-correcting rounding) on the grids above: same sizes, other codes.
    "gptq-uniform4-g128": dict(bits=4, scheme="uniform", group_size=128, method="gptq"),
    "gptq-uniform4-g32": dict(bits=4, scheme="uniform", group_size=32, method="gptq"),
    "gptq-uniform3-g128": dict(bits=3, scheme="uniform", group_size=128, method="gptq"),
    "gptq-uniform4-channel": dict(bits=4, scheme="uniform", granularity="per-channel", method="gptq"),
    "gptq-apot4-g128": dict(bits=4, scheme="apot", group_size=128, method="gptq"),
    "uniform4-g32": dict(bits=4, scheme="uniform", group_size=32),
}


def row(name: str, result: dict, size: int, fp32: int, extra: dict) -> dict:
    langs = result["languages"]
    return {"name": name, "size_bytes": size, "ratio_vs_fp32": fp32 / size,
            "cer_ja": langs.get("ja", {}).get("cer"), "wer_en": langs.get("en", {}).get("wer"),
            "n_ja": langs.get("ja", {}).get("n"), "n_en": langs.get("en", {}).get("n"), "rtf": result["rtf"], **extra}


def render(rows: list[dict]) -> str:
    rows = list({r["name"]: r for r in rows}.values())  # a re-run row replaces the earlier one
    lines = ["| config | bits/weight (quantized) | file MB | ratio vs fp32 | CER ja % | WER en % |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        bpw = f"{r['bpw']:.3f}" if r.get("bpw") else "—"
        pct = [f"{100 * v:.2f}" if v is not None else "—" for v in (r["cer_ja"], r["wer_en"])]
        lines.append(f"| {r['name']} | {bpw} | {r['size_bytes'] / 1e6:.1f} | {r['ratio_vs_fp32']:.2f} | {pct[0]} | {pct[1]} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="base")
    ap.add_argument("--manifest", default="corpus/manifest.jsonl")
    ap.add_argument("--split", default="test")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    ap.add_argument("--only", nargs="*", default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ct2-compute", action="store_true", help="also decode the int8 export with float32 compute")
    ap.add_argument("--calibration-split", default="train", help="split of --manifest that calibrates the gptq rows")
    ap.add_argument("--calibration-clips", type=int, default=32)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "quantization.json"
    rows = json.loads(results_path.read_text()) if results_path.exists() else []
    done = {r["name"] for r in rows}

    def record(r: dict) -> None:
        rows.append(r)
        results_path.write_text(json.dumps(rows, indent=2))
        (args.out / "quantization_table.md").write_text(render(rows))
        print(json.dumps({k: v for k, v in r.items() if k != "plan"}), flush=True)

    dataset = load_dataset(args.manifest, split=args.split, limit=args.limit)
    source = load_model(args.model)
    fp32 = 4 * source.params  # parameters() counts the tied embedding / output projection once
    if "fp32 (source)" not in done and (args.only is None or "fp32" in args.only):
        record(row("fp32 (source)", evaluate_model(source, dataset), fp32, fp32, {"bpw": 32.0}))
    ckpts = args.out / "checkpoints"
    hessians: dict = {}
    for name, kwargs in CONFIGS.items():
        if name in done or (args.only is not None and name not in args.only):
            continue
        start = time.time()
        path = ckpts / f"{name}.safetensors"
        kwargs = dict(kwargs)
        method = kwargs.pop("method", "rtn")
        plan = plan_from_options(**kwargs)
        quantized = None
        if method == "gptq":
            specs = plan.resolve(source.model.state_dict())
            targets = gptq_targets(source.model, specs)
            if not hessians:  # from the float model: the same for every gptq row
                calibration = load_dataset(args.manifest, split=args.calibration_split)
                hessians.update(input_hessians(source.model, source.processor, calibration,
                                               linear_weights(source.model), args.calibration_clips))
            quantized = gptq_tensors(source.model, specs, {n: hessians[n] for n in targets if n in hessians})
            kwargs["method"] = "gptq"
            kwargs["calibration"] = {"split": args.calibration_split, "clips": args.calibration_clips}
        summary = save_packed(path, source.model, source.processor, plan, force=True, quantized=quantized)
        packed = load_model(str(path))
        r = row(name, evaluate_model(packed, dataset), summary["file_bytes"], fp32,
                {"bpw": summary["bits_per_weight_quantized"], "payload_bytes": summary["payload_bytes"],
                 "quantize_s": round(time.time() - start, 1), "options": {k: v for k, v in kwargs.items()}})
        record(r)
        if name == "uniform8-channel":  # CTranslate2 int8 export of the same checkpoint, run by its engine
            ct2 = export_model(packed, "ct2", ckpts / f"{name}-ct2", force=True)
            engine = evaluate_model(load_model(str(ckpts / f"{name}-ct2")), dataset, engine="ctranslate2")
            record(row(f"{name} → ct2 {ct2.precision} (ctranslate2 engine)", engine, ct2.size_bytes, fp32,
                       {"bpw": None, "ct2_reason": ct2.reason}))
    if args.ct2_compute:
        ct2_compute_check(ckpts / "uniform8-channel-ct2", dataset, fp32, record)


def ct2_compute_check(directory: Path, dataset, fp32: int, record) -> None:
    """The int8 CTranslate2 export decoded with float32 compute (int8 weights dequantized, float
    activations) next to the default int8 compute (activations quantized too): tells weight
    mapping errors apart from the engine's own activation quantization."""
    from whisper_kdq.evaluate import _report
    from whisper_kdq.evaluate.decode import transcribe_ct2

    loaded = load_model(str(directory))
    for compute in ("default", "float32"):
        out = transcribe_ct2(loaded.path, loaded.processor, dataset.utterances, batch_size=8, compute_type=compute)
        record(row(f"uniform8-channel → ct2 int8, compute_type={compute}", _report(loaded, dataset, out, "ctranslate2"),
                   (directory / "model.bin").stat().st_size, fp32, {"bpw": None}))


if __name__ == "__main__":
    main()
