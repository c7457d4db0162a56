"""The packed file's `__metadata__`: what a writer records and what a reader checks before it trusts it.

docs/FORMAT.md ("Metadata", "Verification") specifies both; `checkpoint.py` writes the container, `reader.py` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

from whisper_kdq.errors import CheckpointError
from whisper_kdq.quant.generated import generate

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "VERSIONS", "format_version", "check_metadata"]

FORMAT_NAME = "whisper-kdq-packed"
# The newest this tool reads and writes. Version 1: weights only; 2: + quantized activations; 3: + row splits;
# 4: + generated tensors; 5: + 8-bit scales; 6: + 1-bit codes (each adds to the last). Writers write the lowest
# version that holds the file.
FORMAT_VERSION = 6
VERSIONS = ("1", "2", "3", "4", "5", "6")


def format_version(*, activations: bool, generated: bool, qmeta: dict) -> str:
    """The lowest version that holds the file: a reader that does not know quantized activations (2), row
    splits (3), generated tensors (4), 8-bit scales (5) or 1-bit codes (6) then refuses it rather than run it
    wrong; others read it. `qmeta`: the header's quantization table."""
    rows, scales, one_bit = _table_needs(qmeta)
    return ("6" if one_bit else "5" if scales else "4" if generated else "3" if rows else "2" if activations else "1")


def _table_needs(qmeta: dict) -> tuple[bool, bool, bool]:
    """What a quantization table holds that needs a newer version: row splits, 8-bit scales, 1-bit codes."""
    tables = qmeta.values()
    return (any("rows" in m for m in tables), any(m.get("scale_bits", 16) != 16 for m in tables),
            any(m["bits"] == 1 or m.get("rows", {}).get("bits") == 1 for m in tables))


def check_metadata(path: Path, meta: dict[str, str]) -> None:
    """CheckpointError (one line naming `path`) unless `meta` is a header this version can read."""
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a whisper-kdq packed checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") not in VERSIONS:
        raise CheckpointError(f"{path}: unsupported format version {meta.get('format_version')!r}; "
                              f"this whisper-kdq reads versions {', '.join(VERSIONS)}")
    version = meta["format_version"]
    if (version == "2" and "activations" not in meta) or (version == "1" and "activations" in meta):
        raise CheckpointError(f"{path}: damaged header (format version {version} "
                              f"{'needs' if version == '2' else 'has no'} activation settings)")
    try:
        split, small_scales, one_bit = _table_needs(json.loads(meta["quantization"]))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: damaged header (no readable quantization table)") from None
    if split and version not in ("3", "4", "5", "6"):
        raise CheckpointError(f"{path}: damaged header (row splits in a format version {version} file)")
    if small_scales and version not in ("5", "6") or version == "5" and not small_scales:
        raise CheckpointError(f"{path}: damaged header (format version {version} "
                              f"{'needs' if version == '5' else 'has no'} 8-bit scales)")
    if one_bit != (version == "6"):
        raise CheckpointError(f"{path}: damaged header (format version {version} "
                              f"{'needs' if version == '6' else 'has no'} 1-bit codes)")
    if version == "4" and "generated" not in meta or version in ("1", "2", "3") and "generated" in meta:
        raise CheckpointError(f"{path}: damaged header (format version {version} "
                              f"{'needs' if version == '4' else 'has no'} generated tensors)")
    try:  # each names a formula this version knows, at a shape it can build
        [generate(g["formula"], tuple(g["shape"])) for g in json.loads(meta.get("generated", "{}")).values()]
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged header (generated tensors: {exc})") from None
