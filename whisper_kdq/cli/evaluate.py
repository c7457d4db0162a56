"""`whisper-kdq evaluate`: WER/CER per language, size and speed, several models side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from whisper_kdq.cli import app
from whisper_kdq.cli.common import console, print_json, resolve_device, user_errors
from whisper_kdq.data.manifest import load_dataset
from whisper_kdq.evaluate import ENGINES, evaluate_model
from whisper_kdq.evaluate.compare import compare_predictions
from whisper_kdq.fileio import check_output, write_text_atomic
from whisper_kdq.models.refs import load_model


@app.command()
@user_errors
def evaluate(
    model: List[str] = typer.Option(..., "--model", "-m", help="Model reference; repeat to compare models."),
    data: Path = typer.Option(..., "--data", "-d", help="JSONL/CSV manifest or saved datasets directory."),
    split: Optional[str] = typer.Option(None, help="Keep only rows of this split (e.g. test)."),
    language: Optional[str] = typer.Option(None, help="Keep only rows of this language (e.g. ja)."),
    limit: Optional[int] = typer.Option(None, help="Evaluate the first N utterances only."),
    batch_size: int = typer.Option(8, help="Utterances decoded together."),
    beam_size: int = typer.Option(1, help="1 = greedy."),
    engine: str = typer.Option("transformers", help=f"Decoding engine: {', '.join(ENGINES)} (CTranslate2 directories only)."),
    compute_type: str = typer.Option("default", help="ctranslate2 engine only: default (int8 weights run int8), float32, int8_float32, …"),
    device: str = typer.Option("auto", help="auto, cpu or cuda."),
    fallback: bool = typer.Option(False, "--fallback", help="Re-decode looping or unsure clips by sampling at rising "
                                  "temperatures (openai/whisper's fallback; seeded, so reproducible)."),
    window: Optional[float] = typer.Option(None, help="Seconds of audio the encoder reads, padded, instead of 30 "
                                           "(every clip must fit; faster on short clips: docs/BENCHMARKS.md, 'A shorter audio window')."),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip unusable rows and report them instead of stopping."),
    predictions: Optional[Path] = typer.Option(None, help="Write every hypothesis beside its reference (JSONL)."),
    force: bool = typer.Option(False, "--force", help="Overwrite --predictions if it exists."),
    as_json: bool = typer.Option(False, "--json", help="Print a machine-readable result on stdout."),
) -> None:
    """Decode a dataset with one or more models and report WER/CER per language, size and speed."""
    if predictions is not None:
        check_output(predictions, force)
    device = resolve_device(device)
    dataset = load_dataset(data, skip_bad=skip_bad, split=split, language=language, limit=limit)
    if dataset.skipped:
        console.print(f"[yellow]skipped {len(dataset.skipped)} bad row(s):[/]")
        for reason in dataset.skipped[:20]:
            console.print(f"  {reason}", highlight=False)
    results = []
    for ref in model:
        loaded = load_model(ref, device=device)
        with Progress(TextColumn(f"[bold]{ref}[/]"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=as_json and not console.is_terminal) as bar:
            task = bar.add_task("decode", total=len(dataset))
            results.append(evaluate_model(loaded, dataset, batch_size=batch_size, beam_size=beam_size,
                                          device=device, engine=engine, compute_type=compute_type, fallback=fallback, window_s=window,
                                          progress=lambda n: bar.advance(task, n)))
        del loaded
        trained, used = results[-1].get("trained_window_s"), results[-1]["decoding"]["window_s"]
        if trained is not None and trained != used:
            console.print(f"[yellow]note:[/] {ref} was trained on {trained:g}-s windows and decoded here at {used:g} s; "
                          f"--window {trained:g} decodes it as trained", highlight=False)
    if predictions is not None:
        lines = [json.dumps({"model": r["model"], **p}, ensure_ascii=False) for r in results for p in r["predictions"]]
        write_text_atomic(predictions, "\n".join(lines) + "\n")
    summary = {
        "dataset": str(data),
        "split": split,
        "language": language,
        "n": len(dataset),
        "skipped": dataset.skipped,
        "models": [{k: v for k, v in r.items() if k != "predictions"} for r in results],
    }
    for r, m in zip(results[1:], summary["models"][1:]):
        # Each model against the first on the same clips: the change and its 95 % paired-bootstrap interval.
        changes = compare_predictions(results[0]["predictions"], r["predictions"])
        m["versus_first"] = {lang: c.as_dict() for lang, c in changes.items()}
    if as_json:
        print_json(summary)
    else:
        console.print(comparison_table(summary["models"]))


def comparison_table(models: list[dict]) -> Table:
    languages = sorted({lang for m in models for lang in m["languages"]})
    table = Table(title="whisper-kdq evaluate")
    table.add_column("metric")
    for m in models:
        table.add_column(m["model"], justify="right")
    rows: list[tuple[str, list[str]]] = []
    for lang in languages:
        stats = [m["languages"].get(lang, {}) for m in models]
        rows.append((f"{lang} CER %", [_pct(s.get("cer")) for s in stats]))
        rows.append((f"{lang} WER %", [_pct(s.get("wer")) for s in stats]))
        rows.append((f"{lang} utterances", [str(s.get("n", "")) for s in stats]))
        if len(models) > 1:
            changes = [m.get("versus_first", {}).get(lang) for m in models]
            metric = next((c["metric"].upper() for c in changes if c), "error")
            rows.append((f"{lang} {metric} vs first (95 % CI)", [_change(c) for c in changes]))
    rows += [
        ("parameters (M)", [f"{m['params'] / 1e6:.1f}" for m in models]),
        ("size (MB)", [f"{m['size_bytes'] / 1e6:.1f}" for m in models]),
        ("real-time factor", [f"{m['rtf']:.3f}" for m in models]),
        ("wall time (s)", [f"{m['wall_s']:.1f}" for m in models]),
        ("engine", [m["engine"] for m in models]),
    ]
    for name, values in rows:
        table.add_row(name, *values)
    return table


def _change(c: dict | None) -> str:
    if c is None or c["relative"] is None:
        return "-"
    low, high = c["ci95"]
    return f"{100 * c['relative']:+.1f} % [{100 * low:+.1f}, {100 * high:+.1f}]"


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"
