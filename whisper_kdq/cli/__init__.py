"""The `whisper-kdq` command line: one small module per subcommand, each a thin shell over the library."""

from __future__ import annotations

import importlib

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


# Each module registers its command on `app` when imported. A module that is not written yet is
# simply absent from the list.
_COMMANDS = ["evaluate", "quantize", "export", "distill", "select_layers"]
for _name in _COMMANDS:
    try:
        importlib.import_module(f"whisper_kdq.cli.{_name}")
    except ModuleNotFoundError as exc:  # only the command module itself may be missing
        if exc.name != f"whisper_kdq.cli.{_name}":
            raise


def main() -> None:
    app()
