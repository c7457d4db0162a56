"""Reading a packed checkpoint: verify the container, unpack codes and scales, rebuild the float model.

`checkpoint.py` writes what this module reads; the layout and the checks are specified in docs/FORMAT.md.
"""

from __future__ import annotations

import hashlib
import json
import lzma
import struct
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from whisper_kdq.errors import CheckpointError
from whisper_kdq.quant.container import DTYPES, TOKENIZER_KEY
from whisper_kdq.quant.generated import generate
from whisper_kdq.quant.metadata import check_metadata, compressed_tensors
from whisper_kdq.quant.packing import packed_nbytes, unpack
from whisper_kdq.quant.rows import ROWS_SUFFIX, RowSplit, dequantize_split, stored_parts
from whisper_kdq.quant.scales import decode_scales
from whisper_kdq.quant.schemes import QTensor, QuantSpec, dequantize

__all__ = ["read_packed", "unpack_tensors", "packed_codes", "load_packed"]


def read_packed(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Verify and read the raw tensors and metadata (CheckpointError when anything is off)."""
    path = Path(path)
    raw = path.read_bytes()
    if len(raw) < 8:
        raise CheckpointError(f"{path}: truncated (only {len(raw)} bytes)")
    (hlen,) = struct.unpack("<Q", raw[:8])
    if 8 + hlen > len(raw):
        raise CheckpointError(f"{path}: truncated: header says {hlen} bytes, file has {len(raw) - 8} after the length")
    try:
        header = json.loads(raw[8:8 + hlen].decode("utf-8"))
        meta = header.pop("__metadata__")
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError):
        raise CheckpointError(f"{path}: damaged header (not the JSON of a whisper-kdq packed checkpoint)") from None
    check_metadata(path, meta)
    data = memoryview(raw)[8 + hlen:]
    end = max((v["data_offsets"][1] for v in header.values()), default=0)
    if len(data) != end:
        what = "truncated" if len(data) < end else "has trailing bytes"
        raise CheckpointError(f"{path}: {what}: tensors need {end} bytes of data, file has {len(data)}")
    if "sha256:" + hashlib.sha256(data).hexdigest() != meta.get("checksum"):
        raise CheckpointError(f"{path}: checksum mismatch: the file was altered or corrupted")
    tensors = {}
    for name, v in header.items():
        torch_dtype, np_dtype, _ = DTYPES[v["dtype"]]
        a, b = v["data_offsets"]
        tensors[name] = torch.from_numpy(np.frombuffer(data[a:b], dtype=np_dtype).copy()).reshape(v["shape"])
    for name in compressed_tensors(path, meta):
        tensors[name] = _decompress(path, name, tensors.get(name))
    return tensors, meta


def _decompress(path: Path, name: str, stream: torch.Tensor | None) -> torch.Tensor:
    """A compressed code stream (format version 7) as the bit-packed bytes it holds."""
    if stream is None:
        raise CheckpointError(f"{path}: damaged header (compressed lists {name}, which the file does not hold)")
    try:
        raw = lzma.decompress(stream.numpy().tobytes(), format=lzma.FORMAT_XZ)
    except lzma.LZMAError as exc:
        raise CheckpointError(f"{path}: {name}: not an xz stream ({exc})") from None
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def _spec(m: dict) -> QuantSpec:
    """A tensor's spec as the header's `quantization` entry records it."""
    return QuantSpec(m["scheme"], m["bits"], m["granularity"], m["group_size"], m["symmetric"],
                     bool(m.get("full_range", False)),  # absent in files written before it existed
                     int(m.get("scale_bits", 16)))  # absent: fp16 (every file before version 5)


def _qtensors(tensors: dict[str, torch.Tensor], qmeta: dict) -> dict[str, QTensor]:
    """Every stored part: NAME (the whole tensor, or the rows a split does not list) and NAME::rows (the listed)."""
    out = {}
    for name, m in qmeta.items():
        spec = _spec(m)
        split = None if "rows" not in m else RowSplit(tuple(tensors[name + ROWS_SUFFIX].tolist()),
                                                      replace(spec, bits=m["rows"]["bits"]))
        for part, pspec, pshape in stored_parts(name, spec, tuple(m["shape"]), split):
            n = int(np.prod(pshape))
            if tensors[f"{part}::codes"].numel() != packed_nbytes(n, pspec.bits):
                raise CheckpointError(f"{part}::codes: {tensors[f'{part}::codes'].numel()} bytes where {n} codes of "
                                      f"{pspec.bits} bits need {packed_nbytes(n, pspec.bits)}")
            codes = unpack(tensors[f"{part}::codes"], pspec.bits, int(np.prod(pshape))).reshape(pshape)
            scales = tensors[f"{part}::scales"]
            if pspec.scale_bits == 8:
                scales = decode_scales(scales, tensors[f"{part}::scale_ranges"])
            out[part] = QTensor(codes, scales, tensors.get(f"{part}::offsets"), pspec, pshape,
                                None if split is None or part == name else split.rows)
    return out


def unpack_tensors(tensors: dict[str, torch.Tensor], meta: dict[str, str]) -> tuple[dict[str, torch.Tensor], dict]:
    """Dequantized float32 state (tied copies not repeated) and the per-tensor spec table."""
    qmeta = json.loads(meta["quantization"])
    state = {n: t for n, t in tensors.items() if "::" not in n and n != TOKENIZER_KEY}
    state.update({n: generate(g["formula"], tuple(g["shape"])) for n, g in json.loads(meta.get("generated", "{}")).items()})
    qs = _qtensors(tensors, qmeta)
    for name in qmeta:
        # The stored APoT table is authoritative: a reader needs no APoT code, only a lookup.
        listed, table = qs.get(name + ROWS_SUFFIX), tensors.get(f"{name}::table")
        if listed is None:
            state[name] = dequantize(qs[name], table=table)
        else:
            state[name] = dequantize_split(qs[name], listed, RowSplit(listed.rows, listed.spec), table,
                                           tensors.get(f"{name}{ROWS_SUFFIX}::table"))
    return state, qmeta


def packed_codes(path: Path) -> dict[str, QTensor]:
    """The codes and scales of every quantized weight of a packed checkpoint (what `distill --qat-init packed`
    starts from, so that training goes on from the file's grid instead of a new one). A row-split weight
    gives two parts: NAME (its unlisted rows) and NAME::rows (the listed rows; `QTensor.rows` lists them)."""
    tensors, meta = read_packed(path)
    return _qtensors(tensors, json.loads(meta["quantization"]))


def load_packed(path: Path, device: str = "cpu"):
    """Load a packed checkpoint as a `LoadedModel` (kind "packed"), dequantized into float32."""
    from transformers import GenerationConfig, WhisperConfig, WhisperForConditionalGeneration

    from whisper_kdq.models.refs import LoadedModel
    from whisper_kdq.models.tokenizer import build_processor

    path = Path(path)
    tensors, meta = read_packed(path)
    state, qmeta = unpack_tensors(tensors, meta)
    config = WhisperConfig.from_dict(json.loads(meta["config"]))
    model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = json.loads(meta["tied"])
    if unexpected or set(missing) - set(tied):
        raise CheckpointError(f"{path}: tensors do not fit the model config (missing {sorted(set(missing) - set(tied))[:3]}, "
                              f"unexpected {sorted(unexpected)[:3]})")
    model.tie_weights()
    model.generation_config = GenerationConfig.from_dict(json.loads(meta["generation_config"]))
    with tempfile.TemporaryDirectory() as d:
        (Path(d) / "tokenizer.json").write_bytes(lzma.decompress(tensors[TOKENIZER_KEY].numpy().tobytes()))
        processor = build_processor(Path(d) / "tokenizer.json", config.num_mel_bins)
    model.to(device).eval()
    activations = json.loads(meta["activations"]) if "activations" in meta else None
    if activations is not None:
        from whisper_kdq.quant.activations import quantize_activations

        quantize_activations(model, activations["layers"], activations["bits"])
    info = {"format_version": int(meta["format_version"]), "bits_per_weight": float(meta["bits_per_weight"]),
            "activation_bits": None if activations is None else activations["bits"],
            "tensors": {n: {**_spec(m).as_dict(), **({"rows": m["rows"]} if "rows" in m else {})} for n, m in qmeta.items()},
            "float_weights": [n for n, t in state.items() if n not in qmeta and n.endswith(".weight")
                              and t.dim() >= 2 and "embed_positions" not in n]}
    return LoadedModel(model, processor, str(path), "packed", path, path.stat().st_size, info)
