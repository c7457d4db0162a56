"""The packed file's `__metadata__`: what a writer records and what a reader checks before it trusts it.

docs/FORMAT.md ("Metadata", "Verification") specifies both; `checkpoint.py` writes the container, `reader.py` reads it.
"""

from __future__ import annotations

import json
from pathlib import Path

from whisper_kdq.errors import CheckpointError
from whisper_kdq.quant.generated import generate

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "VERSIONS", "format_version", "check_metadata", "compressed_tensors"]

FORMAT_NAME = "whisper-kdq-packed"
# The newest this tool reads and writes. Version 1: weights only; 2: + quantized activations; 3: + row splits;
# 4: + generated tensors; 5: + 8-bit scales; 6: + 1-bit codes; 7: + xz-compressed code streams (each adds to the
# last). Writers write the lowest version that holds the file.
FORMAT_VERSION = 7
VERSIONS = ("1", "2", "3", "4", "5", "6", "7")
CODECS = ("xz",)  # how a listed code stream is compressed (`compressed` in the metadata)


def format_version(*, activations: bool, generated: bool, qmeta: dict, compressed: bool = False) -> str:
    """The lowest version that holds the file: a reader that does not know quantized activations (2), row
    splits (3), generated tensors (4), 8-bit scales (5), 1-bit codes (6) or compressed codes (7) then refuses
    it rather than run it wrong; others read it. `qmeta`: the header's quantization table."""
    rows, scales, one_bit = _table_needs(qmeta)
    return ("7" if compressed else "6" if one_bit else "5" if scales else "4" if generated else "3" if rows
            else "2" if activations else "1")


def _table_needs(qmeta: dict) -> tuple[bool, bool, bool]:
    """What a quantization table holds that needs a newer version: row splits, 8-bit scales, 1-bit codes."""
    tables = qmeta.values()
    return (any("rows" in m for m in tables), any(m.get("scale_bits", 16) != 16 for m in tables),
            any(m["bits"] == 1 or m.get("rows", {}).get("bits") == 1 for m in tables))


def compressed_tensors(path: Path, meta: dict[str, str]) -> list[str]:
    """The code streams a version-7 file stores compressed (CheckpointError when the entry is malformed)."""
    if "compressed" not in meta:
        return []
    try:
        entry = json.loads(meta["compressed"])
        names = entry["tensors"]
        ok = entry["codec"] in CODECS and isinstance(names, list) and all(
            isinstance(n, str) and n.endswith("::codes") for n in names)
    except (TypeError, KeyError, json.JSONDecodeError):
        ok = False
    if not ok:
        raise CheckpointError(f"{path}: damaged header (compressed: expected {{\"codec\": \"xz\", \"tensors\": [NAME::codes, ...]}})")
    return names


def check_metadata(path: Path, meta: dict[str, str]) -> None:
    """CheckpointError (one line naming `path`) unless `meta` is a header this version can read."""
    if meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: not a whisper-kdq packed checkpoint (format {meta.get('format')!r})")
    if meta.get("format_version") not in VERSIONS:
        raise CheckpointError(f"{path}: unsupported format version {meta.get('format_version')!r}; "
                              f"this whisper-kdq reads versions {', '.join(VERSIONS)}")
    version, v = meta["format_version"], int(meta["format_version"])
    if (version == "2" and "activations" not in meta) or (version == "1" and "activations" in meta):
        raise CheckpointError(f"{path}: damaged header (format version {version} "
                              f"{'needs' if version == '2' else 'has no'} activation settings)")
    try:
        split, small_scales, one_bit = _table_needs(json.loads(meta["quantization"]))
    except (KeyError, TypeError, AttributeError, json.JSONDecodeError):
        raise CheckpointError(f"{path}: damaged header (no readable quantization table)") from None
    if split and v < 3:
        raise CheckpointError(f"{path}: damaged header (row splits in a format version {version} file)")
    # What a version introduces it must hold (else a lower version would), and no lower version may hold it.
    for first, present, what in ((4, "generated" in meta, "generated tensors"), (5, small_scales, "8-bit scales"),
                                 (6, one_bit, "1-bit codes"), (7, "compressed" in meta, "compressed codes")):
        if present and v < first or v == first and not present:
            raise CheckpointError(f"{path}: damaged header (format version {version} "
                                  f"{'needs' if v == first else 'has no'} {what})")
    compressed_tensors(path, meta)
    try:  # each names a formula this version knows, at a shape it can build
        [generate(g["formula"], tuple(g["shape"])) for g in json.loads(meta.get("generated", "{}")).values()]
    except (ValueError, TypeError, KeyError, AttributeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: damaged header (generated tensors: {exc})") from None
