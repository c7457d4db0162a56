"""`whisper-kdq export`: write a model for transformers, CTranslate2 / faster-whisper, or as a packed checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from whisper_kdq.cli import app
from whisper_kdq.cli.common import console, print_json, resolve_device, user_errors
from whisper_kdq.export import FORMATS, export_model
from whisper_kdq.models.refs import load_model


@app.command()
@user_errors
def export(
    model: str = typer.Option(..., "--model", "-m", help="Model reference (alias, directory, packed checkpoint, hub id)."),
    fmt: str = typer.Option(..., "--format", "-f", help=f"One of {', '.join(FORMATS)}."),
    out: Path = typer.Option(..., "--out", "-o", help="Output directory (hf, ct2) or .safetensors file (packed)."),
    ct2_quantization: str = typer.Option("auto", help="ct2 only: auto (int8 when exact, else float16), int8, float16, float32."),
    plan: Optional[Path] = typer.Option(None, help="packed only: quantization plan JSON (see docs/PLAN.md)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing output."),
    device: str = typer.Option("cpu", help="auto, cpu or cuda (for the re-load check)."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result on stdout."),
) -> None:
    """Write MODEL in FORMAT to OUT, re-load it and check one forward pass against the source."""
    loaded = load_model(model, device=resolve_device(device))
    plan_obj = None
    if plan is not None:
        from whisper_kdq.quant.plan import load_plan

        plan_obj = load_plan(plan)
    with console.status(f"exporting {model} as {fmt}"):
        result = export_model(loaded, fmt, out, force=force, ct2_quantization=ct2_quantization, plan=plan_obj)
    from whisper_kdq.evaluate.window import trained_window

    window = trained_window(loaded.model)
    if window is not None and fmt == "ct2":  # transformers and packed outputs keep the record; CTranslate2 has none
        console.print(f"[yellow]note:[/] {model} was trained on {window:g}-s windows; CTranslate2 and faster-whisper "
                      f"read 30 s unless told otherwise (`evaluate --engine ctranslate2 --window {window:g}` reads it as "
                      "trained)", highlight=False)
    if as_json:
        print_json({**result.as_dict(), **({"trained_window_s": window} if window is not None else {})})
    else:
        console.print(f"wrote {result.out} ({result.size_bytes / 1e6:.1f} MB, {result.precision}: {result.reason}); "
                      f"re-load check max logit diff {result.max_logit_diff:.2e}")
