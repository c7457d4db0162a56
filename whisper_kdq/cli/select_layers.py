"""`whisper-kdq select-layers`: measure per-layer quantization and distillation losses, write a plan."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from whisper_kdq.cli import app
from whisper_kdq.cli.common import console, print_json, resolve_device, user_errors
from whisper_kdq.errors import UserError
from whisper_kdq.selection import STRATEGIES, select_layers
from whisper_kdq.selection.units import GRANULARITIES, check_granularity


@app.command("select-layers")
@user_errors
def select_layers_cmd(
    model: str = typer.Option(..., "--model", "-m", help="The student (any model reference) whose layers get bits."),
    calibration: Path = typer.Option(..., "--calibration", "--data", help="Calibration manifest (JSONL/CSV)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Plan JSON to write (for quantize/distill --plan)."),
    teacher: Optional[str] = typer.Option(None, help="Teacher reference: measures each block's distillation loss."),
    strategy: str = typer.Option("guided", help=f"One of {', '.join(STRATEGIES)}."),
    scheme: str = typer.Option("uniform", help="uniform or apot."),
    low_bits: int = typer.Option(3, help="Bits of the layers selected for low precision."),
    high_bits: int = typer.Option(4, help="Bits of the other layers (0 = keep them float)."),
    group_size: int = typer.Option(128, help="Group size of both (0 = per output channel)."),
    full_range: bool = typer.Option(False, "--full-range", help="Uniform symmetric on all 2**bits codes, signed scales (q4_0's grid)."),
    target_mb: Optional[float] = typer.Option(None, help="Target packed file size in MB (10^6 bytes)."),
    target_ratio: Optional[float] = typer.Option(None, help="Target size as a ratio vs the fp32 model (or --ratio-of)."),
    ratio_of: Optional[str] = typer.Option(None, help="Model whose fp32 size --target-ratio refers to (default --teacher, else --model)."),
    target_bpw: Optional[float] = typer.Option(None, help="Target bits per weight of the whole file."),
    low_fraction: Optional[float] = typer.Option(None, help="Without a size target: the fraction of layers at low bits."),
    granularity: str = typer.Option("block", help=f"Bits per {' or per '.join(GRANULARITIES)} (linear: each weight matrix of a block)."),
    embedding_rows_bits: Optional[int] = typer.Option(None, help="Bits for the token-embedding rows the calibration transcripts use (all of the manifest's, or --split's); the other rows get the embedding's selected bits."),
    distill_fraction: float = typer.Option(0.5, help="Fraction of blocks per stack that get hidden-state distillation."),
    split: Optional[str] = typer.Option(None, help="Use only this split of the manifest."),
    limit: int = typer.Option(16, help="Calibration utterances, taken in turn from each language of the manifest."),
    seed: int = typer.Option(0, help="Seed of the random strategy."),
    batch_size: int = typer.Option(8),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing plan."),
    as_json: bool = typer.Option(False, "--json", help="Print the selection as JSON on stdout."),
) -> None:
    """Choose which layers to quantize at low bits and which to distil, guided by each other's losses."""
    from whisper_kdq.data.manifest import load_dataset
    from whisper_kdq.fileio import check_output, write_text_atomic
    from whisper_kdq.models.refs import load_model
    from whisper_kdq.quant.schemes import QuantSpec

    if out is not None:
        check_output(out, force)
    check_granularity(granularity)  # before any model is loaded
    if sum(x is not None for x in (target_mb, target_ratio, target_bpw)) > 1:
        raise UserError("give at most one of --target-mb, --target-ratio, --target-bpw")
    gran = dict(granularity="group", group_size=group_size) if group_size else dict(granularity="per-channel")
    if full_range:
        gran["full_range"] = True
    low = QuantSpec(scheme, low_bits, **gran)
    high = QuantSpec(scheme, high_bits, **gran) if high_bits else None
    if high is not None and high.bits <= low.bits:
        raise UserError(f"--high-bits ({high_bits}) must be above --low-bits ({low_bits}), or 0 for float")
    if embedding_rows_bits is not None and not 2 <= embedding_rows_bits <= 8:
        raise UserError(f"--embedding-rows-bits must be 2-8, got {embedding_rows_bits}")
    dev = resolve_device(device)
    student = load_model(model, device=dev)
    row_rules = []
    if embedding_rows_bits is not None:
        from whisper_kdq.quant.rows import embedding_row_rule

        row_rules.append(embedding_row_rule(student.processor.tokenizer, calibration, embedding_rows_bits, split))
    teacher_model = load_model(teacher, device=dev) if teacher else None
    params = student.params
    target = None
    if target_mb is not None:
        target = int(target_mb * 1e6)
    elif target_bpw is not None:
        target = int(target_bpw * params / 8)
    elif target_ratio is not None:
        ref = load_model(ratio_of) if ratio_of else (teacher_model or student)
        target = int(4 * ref.params / target_ratio)
    # Decoded lazily: only the chosen clips are read.
    data = load_dataset(calibration, split=split, check_audio=False).spread(limit)
    with console.status("measuring per-layer losses") as status:
        selection = select_layers(student, data, teacher=teacher_model, strategy=strategy, low=low, high=high,
                                  target_bytes=target, low_fraction=low_fraction, distill_fraction=distill_fraction,
                                  seed=seed, batch_size=batch_size, device=dev, granularity=granularity, row_rules=row_rules,
                                  progress=lambda name: status.update(f"measuring per-layer losses: {name}"))
    payload = {**selection.plan.as_dict(), "selection": selection.as_dict()}
    payload["selection"].update({"granularity": granularity, "model": model, "teacher": teacher, "calibration": str(calibration),
                                 "utterances": len(data), "fp32_bytes": 4 * params,
                                 "ratio_vs_fp32": 4 * params / selection.predicted_bytes})
    if out is not None:
        write_text_atomic(out, json.dumps(payload, indent=2) + "\n")
    if as_json:
        print_json(payload)
        return
    table = Table(title=f"select-layers ({strategy})")
    for col in ("layer", "params (M)", "quant loss", "distill loss", "teacher layer", "bits", "distilled"):
        table.add_column(col, justify="right" if col != "layer" else "left")
    for u in selection.units:
        table.add_row(u.name, f"{u.params / 1e6:.2f}", _fmt(u.quant_loss), _fmt(u.distill_loss),
                      "" if u.teacher_layer is None else str(u.teacher_layer), "float" if u.bits is None else str(u.bits),
                      "yes" if u.distill else "")
    console.print(table)
    console.print(f"predicted checkpoint: {selection.predicted_bytes / 1e6:.2f} MB "
                  f"({payload['selection']['ratio_vs_fp32']:.2f}x smaller than fp32)"
                  + (f"; plan written to {out}" if out else ""))


def _fmt(x: float) -> str:
    return "" if x != x else f"{x:.4f}"
