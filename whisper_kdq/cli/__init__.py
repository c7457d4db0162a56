"""The `whisper-kdq` command line: one small module per subcommand, each a thin shell over the library."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="whisper-kdq",
    help="Make Whisper small and fast: guided distillation jointly with quantization.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)



@app.callback()
def _root() -> None:
    """Make Whisper small and fast: guided distillation jointly with quantization."""


# Each module registers its command on `app` when imported.
from whisper_kdq.cli import distill, evaluate, export, quantize, select_layers  # noqa: E402,F401


def main() -> None:
    app()
