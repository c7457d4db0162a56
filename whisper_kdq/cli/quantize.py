"""`whisper-kdq quantize`: post-training quantization of any Whisper into a packed checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from whisper_kdq.cli import app
from whisper_kdq.cli.common import console, parse_group_size, print_json, resolve_device, user_errors
from whisper_kdq.errors import UserError


@app.command()
@user_errors
def quantize(
    model: str = typer.Option(..., "--model", "-m", help="Model reference (alias, directory, checkpoint, hub id)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Packed checkpoint to write (.safetensors)."),
    bits: int = typer.Option(8, help="Default bit width, 1-8 (1: uniform with --asymmetric only)."),
    scheme: str = typer.Option("uniform", help="uniform or apot."),
    group_size: Optional[str] = typer.Option(None, help="N, 'channel' or 'tensor' (default: channel at 8 bits, 128 below)."),
    asymmetric: bool = typer.Option(False, "--asymmetric", help="Store an offset per group (APoT always stores its mean)."),
    full_range: bool = typer.Option(False, "--full-range", help="Uniform symmetric on all 2**bits codes with a signed scale (q4_0's grid; no extra bytes)."),
    scale_bits: int = typer.Option(16, "--scale-bits", help="Store the default spec's scales as fp16 (16) or 8-bit log codes (8: ~1 byte a scale, within 2.8 %; for weights at 4 bits or fewer)."),
    floats: Optional[str] = typer.Option(None, "--floats", help="Store biases, norms and float weights as f32 (default) or f16."),
    codec: Optional[str] = typer.Option(None, "--codec", help="Store the code streams as they are (none, default) or xz-compressed (xz: format version 7; trained codes shrink ~13 %)."),
    encoder_bits: Optional[int] = typer.Option(None, help="Bits for encoder layers (0 = keep float)."),
    decoder_bits: Optional[int] = typer.Option(None, help="Bits for decoder layers (0 = keep float)."),
    embedding_bits: Optional[int] = typer.Option(None, help="Bits for the token embedding / output projection (0 = float)."),
    conv_bits: Optional[int] = typer.Option(None, help="Bits for the conv front-end (default 8; 0 = float)."),
    override: List[str] = typer.Option([], "--override", help="REGEX=BITS, REGEX=float or REGEX=SPEC (repeatable; last match wins)."),
    embedding_rows_bits: Optional[int] = typer.Option(None, help="Bits for the token-embedding rows the --rows-from transcripts use (the other rows keep --embedding-bits)."),
    rows_from: Optional[Path] = typer.Option(None, help="Manifest whose transcripts pick those rows (default: --calibration; its --calibration-split)."),
    act_bits: Optional[int] = typer.Option(None, "--act-bits", help="Also round the inputs of quantized linear layers to N bits (4-8) per token, at run time (default: float activations)."),
    plan: Optional[Path] = typer.Option(None, "--plan", help="Per-tensor plan JSON (docs/PLAN.md); flags above add rules after it."),
    clip: Optional[str] = typer.Option(None, help="Clipping search: mse (weight error, default), max (none), output (needs --calibration)."),
    method: str = typer.Option("rtn", "--method", help="rtn (nearest code after the clip search), gptq (error-correcting rounding; needs --calibration) or keep (a packed --model's own grid, re-stored: with --plan its plan and new scale_bits / floats)."),
    calibration: Optional[Path] = typer.Option(None, help="Manifest for --clip output or --method gptq (a few clips are decoded)."),
    calibration_clips: Optional[int] = typer.Option(None, help="How many calibration clips to decode, taken in turn from each language (default 8; 32 with --method gptq)."),
    calibration_split: Optional[str] = typer.Option(None, help="Calibrate only on the manifest rows of this split (e.g. train)."),
    save_plan: Optional[Path] = typer.Option(None, help="Also write the resolved plan JSON here."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the plan and the predicted size; write nothing."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda (calibration only)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result on stdout."),
) -> None:
    """Quantize MODEL's weights (uniform or APoT, 1-8 bits) into one packed .safetensors file."""
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.quant.checkpoint import predict_packed, save_packed
    from whisper_kdq.quant.plan import load_plan, plan_from_options

    if out is None and not dry_run:
        raise UserError("--out is required (or use --dry-run)")
    if out is not None and out.suffix != ".safetensors":
        raise UserError(f"--out must name a .safetensors file, got {out}")
    if out is not None and not dry_run and out.exists() and not force:
        raise UserError(f"{out} exists; use --force to overwrite it")
    if clip == "output" and calibration is None:
        raise UserError("--clip output needs --calibration MANIFEST")
    if method not in ("rtn", "gptq", "keep"):
        raise UserError(f"unknown --method {method!r}: use rtn, gptq or keep")
    if method == "gptq" and calibration is None:
        raise UserError("--method gptq needs --calibration MANIFEST")
    if calibration_clips is not None and calibration_clips < 1:
        raise UserError(f"--calibration-clips must be at least 1, got {calibration_clips}")
    size, granularity = parse_group_size(group_size)
    components = {"encoder": encoder_bits, "decoder": decoder_bits, "embedding": embedding_bits, "conv": conv_bits}
    the_plan = plan_from_options(bits=bits, scheme=scheme, group_size=size, granularity=granularity,
                                 symmetric=False if asymmetric else None, component_bits=components,
                                 overrides=override, clip=clip if clip or calibration is None else "output",
                                 base=load_plan(plan) if plan is not None else None, activation_bits=act_bits,
                                 full_range=full_range, scale_bits=scale_bits, floats=floats, codec=codec)
    if embedding_rows_bits is not None and not 2 <= embedding_rows_bits <= 8:
        raise UserError(f"--embedding-rows-bits must be 2-8, got {embedding_rows_bits}")
    if embedding_rows_bits is not None and (rows_from or calibration) is None:
        raise UserError("--embedding-rows-bits needs --rows-from MANIFEST (or --calibration)")
    loaded = load_model(model, device=resolve_device(device))
    if embedding_rows_bits is not None:
        from whisper_kdq.quant.rows import embedding_row_rule

        the_plan.row_rules.append(embedding_row_rule(loaded.processor.tokenizer, rows_from or calibration,
                                                     embedding_rows_bits, calibration_split))
    state = loaded.model.state_dict()
    the_plan.splits(state)  # a bad row rule fails here, before any work
    if embedding_rows_bits is not None and the_plan.resolve(state).get("model.decoder.embed_tokens.weight") is None:
        raise UserError("--embedding-rows-bits: the token embedding is kept float; row bits apply to a quantized embedding")
    specs = the_plan.resolve(state)
    if save_plan is not None:
        the_plan.save(save_plan)
    if dry_run:
        summary = predict_packed(loaded.model, the_plan, loaded.processor)
        _report(summary, specs, "would write", out, as_json, dry_run=True)
        return
    weights, quantized, kept = None, None, None
    if method == "keep":
        from whisper_kdq.quant.repack import kept_grid

        if loaded.kind != "packed":
            raise UserError(f"--method keep re-stores a packed checkpoint's grid; {model} is a {loaded.kind} model")
        kept = kept_grid(loaded.path, the_plan, state)
    elif method == "gptq":
        quantized = _gptq(loaded, the_plan, specs, calibration, calibration_split, calibration_clips or 32, quiet=as_json)
    elif the_plan.clip == "output":
        from whisper_kdq.data.manifest import load_dataset
        from whisper_kdq.quant.calibrate import input_energy

        n = calibration_clips or 8
        with console.status(f"calibrating on {n} clips"):
            weights = input_energy(loaded.model, loaded.processor, load_dataset(calibration, split=calibration_split), n)
    with console.status(f"quantizing {model}"):
        summary = save_packed(out, loaded.model.cpu(), loaded.processor, the_plan, force=force, column_weights=weights,
                              quantized=quantized, qparams=kept)
    summary["method"] = method
    _report(summary, specs, "wrote", out, as_json, dry_run=False)


def _gptq(loaded, the_plan, specs: dict, calibration: Path, split: Optional[str], n: int, quiet: bool) -> dict:
    """GPTQ on every planned linear weight, calibrated on `n` clips (with a progress bar)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.quant.gptq import gptq_for_plan, gptq_targets

    dataset = load_dataset(calibration, split=split)  # a UserError when no row is usable
    total = len(gptq_targets(loaded.model, specs))
    with Progress(TextColumn(f"GPTQ (calibrating on {min(n, len(dataset))} clips first)"), BarColumn(),
                  MofNCompleteColumn(), TimeRemainingColumn(), console=console, disable=quiet) as bar:
        task = bar.add_task("gptq", total=total)
        return gptq_for_plan(loaded.model, loaded.processor, the_plan, dataset, n, progress=lambda _: bar.advance(task))


def _activations_line(summary: dict) -> str:
    bits = summary.get("activation_bits")
    return "" if bits is None else f"; activations of quantized layers rounded to {bits} bits per token at run time"


def _report(summary: dict, specs: dict, verb: str, out: Optional[Path], as_json: bool, dry_run: bool) -> None:
    if as_json:
        print_json({"dry_run": dry_run, "out": None if out is None else str(out),
                    **{k: v for k, v in summary.items() if k != "plan"}})
        return
    from rich.table import Table

    table = Table("tensor", "shape", "quantization", "bytes", box=None, pad_edge=False)
    for name, row in summary["tensors"].items():
        spec = row["spec"]
        what = ("float16" if summary.get("plan", {}).get("floats") == "f16" else "float32") if spec is None else f"{spec['scheme']} {spec['bits']}-bit " + (
            f"group {spec['group_size']}" if spec["granularity"] == "group" else spec["granularity"]) + (
            " full-range" if spec.get("full_range") else "" if spec["symmetric"] else " +offset") + (
            f", {spec['rows']['count']} rows {spec['rows']['bits']}-bit" if "rows" in spec else "") + (
            ", 8-bit scales" if spec.get("scale_bits") == 8 else "")
        table.add_row(name, "x".join(map(str, row["shape"])), what, f"{row['bytes']:,}")
    console.print(table)
    quantized = sum(1 for s in specs.values() if s is not None)
    before = " before xz compression" if summary.get("before_compression") else ""
    console.print(f"{verb} {out or '(nothing: dry run)'}: {summary['file_bytes']:,} bytes{before} "
                  f"({summary['ratio_vs_fp32']:.2f}x smaller than fp32, {summary['ratio_vs_fp16']:.2f}x than fp16); "
                  f"{quantized} tensors quantized at {summary['bits_per_weight_quantized']:.3f} bits per weight; "
                  f"{summary['bits_per_weight_file']:.3f} bits per parameter over the whole file{_activations_line(summary)}")
