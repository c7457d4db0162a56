"""What every subcommand shares: the console, JSON output, and turning user errors into one line."""

from __future__ import annotations

import functools
import json
import sys
from typing import Any, Callable, Optional, TypeVar

import typer
from rich.console import Console

from whisper_kdq.errors import UserError

# Human output goes to stderr so that `--json` on stdout stays machine-readable in pipelines.
console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def print_json(payload: Any) -> None:
    """Print one JSON document on stdout (the only thing a command writes there)."""
    sys.stdout.write(json.dumps(payload, indent=2, ensure_ascii=False, default=str) + "\n")
    sys.stdout.flush()


def user_errors(fn: F) -> F:
    """Report `UserError` as `error: <message>` on one line and exit with its code."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except UserError as exc:
            console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/]")
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def resolve_device(device: str) -> str:
    """`auto` -> `cuda` when available, else `cpu`; explicit `cuda` without a GPU is a user error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise UserError(f"unknown device {device!r}: use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available; use --device auto or cpu")
    return device


def parse_group_size(text: Optional[str]) -> tuple[Optional[int], Optional[str]]:
    """`--group-size`: N (groups of N), `channel` / 0 (per output channel) or `tensor`."""
    if text is None:
        return None, None
    if text in ("channel", "0"):
        return None, "per-channel"
    if text == "tensor":
        return None, "per-tensor"
    if not text.isdigit() or int(text) < 2:
        raise UserError(f"--group-size {text!r}: expected an integer >= 2, 'channel' or 'tensor'")
    return int(text), "group"
