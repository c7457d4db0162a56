"""The packed checkpoint: one `.safetensors` file of bit-packed codes, scales (fp16 or 8-bit) and float tensors.

We write the safetensors container ourselves (8-byte header length, JSON header, data) so that the
header, and therefore the file size, is known before any weight is quantized: `--dry-run` predicts
the size to the byte. The layout is specified in docs/FORMAT.md.
"""

from __future__ import annotations

import functools
import hashlib
import json
import lzma
import struct
import tempfile
import weakref
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from whisper_kdq.fileio import atomic_file, check_output
from whisper_kdq.quant.container import DTYPES, ORDER, TOKENIZER_KEY
from whisper_kdq.quant.generated import generated_tensors
from whisper_kdq.quant.metadata import FORMAT_NAME, FORMAT_VERSION, format_version
from whisper_kdq.quant.packing import pack, packed_nbytes
from whisper_kdq.quant.plan import Plan
from whisper_kdq.quant.scales import SCALE_BLOCK, encode_scales
from whisper_kdq.quant.rows import ROWS_SUFFIX, dequantize_split, quantize_split, stored_parts
from whisper_kdq.quant.schemes import QTensor, dequantize, n_groups, quantize

__all__ = ["FORMAT_NAME", "FORMAT_VERSION", "save_packed", "predict_packed", "quantized_copy"]

_CHECKSUM_PLACEHOLDER = "sha256:" + "0" * 64


@dataclass
class Entry:
    name: str
    dtype: str  # safetensors dtype: F32, I32, F16, U8
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor] | None = None  # produces the data (None in a dry run)

    @property
    def nbytes(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n * DTYPES[self.dtype][2]


def _unique_state(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """State dict without tied copies (proj_out shares the token embedding), and the tie map."""
    state, seen, tied = {}, {}, {}
    for name, t in model.state_dict().items():
        key = (t.data_ptr(), tuple(t.shape)) if t.numel() else None
        if key in seen:
            tied[name] = seen[key]
            continue
        if key is not None:
            seen[key] = name
        state[name] = t
    return state, tied


def _entries(model: torch.nn.Module, plan: Plan, tokenizer_blob: bytes | None,
             qparams: dict | None = None, column_weights: dict | None = None,
             dry: bool = False, quantized: dict | None = None) -> tuple[list[Entry], dict, dict[str, str], dict]:
    state, tied = _unique_state(model)
    specs = {n: s for n, s in plan.resolve(state).items() if s is not None}
    splits = plan.splits(state)
    clip = plan.clip if plan.clip != "output" else "mse"
    entries, qmeta, generated = [], {}, generated_tensors(state)
    for name, t in state.items():
        if name in generated:
            continue  # the metadata names its formula (quant/generated.py)
        spec = specs.get(name)
        if spec is None:
            dtype = "F16" if plan.floats == "f16" else "F32"
            entries.append(Entry(name, dtype, tuple(t.shape),
                                 None if dry else (lambda t=t, d=DTYPES[dtype][0]: t.detach().to(d).cpu())))
            continue
        split = splits.get(name)
        parts = stored_parts(name, spec, tuple(t.shape), split)
        qmeta[name] = {**spec.as_dict(), "shape": list(t.shape), "groups": n_groups(parts[0][2], spec)}
        if split is not None:
            qmeta[name]["rows"] = {"bits": split.spec.bits, "count": len(split.rows), "groups": n_groups(parts[1][2], split.spec)}
        cache: dict[str, dict[str, QTensor]] = {}

        def q(name=name, t=t, spec=spec, split=split, parts=parts, cache=cache) -> dict[str, QTensor]:
            if "q" not in cache and all(p in (quantized or {}) for p, _, _ in parts):
                for p, pspec, shape in parts:
                    if quantized[p].spec != pspec or tuple(quantized[p].shape) != shape:
                        raise ValueError(f"{p}: quantized as {quantized[p].spec.short} {tuple(quantized[p].shape)}, "
                                         f"the plan says {pspec.short} {shape}")
                cache["q"] = {p: quantized[p] for p, _, _ in parts}
            if "q" not in cache:
                w = t.detach().float().cpu()
                if split is None:
                    scale, offset = (qparams or {}).get(name, (None, None))
                    cache["q"] = {name: quantize(w, spec, clip, scale, offset, (column_weights or {}).get(name))}
                else:
                    cache["q"] = dict(zip((name, name + ROWS_SUFFIX), quantize_split(
                        w, spec, split, clip, (qparams or {}).get(name), (qparams or {}).get(name + ROWS_SUFFIX))))
            return cache["q"]

        for part, pspec, shape in parts:
            groups, n = n_groups(shape, pspec), int(np.prod(shape))
            entries.append(Entry(f"{part}::codes", "U8", (packed_nbytes(n, pspec.bits),),
                                 None if dry else (lambda q=q, p=part, b=pspec.bits: pack(q()[p].codes, b))))
            if pspec.scale_bits == 8:  # quant/scales.py: a U8 code per scale, an F16 (lo, step) pair per block
                coded = functools.cache(lambda q=q, p=part: encode_scales(q()[p].scales))  # once for both entries
                entries.append(Entry(f"{part}::scales", "U8", (groups,), None if dry else (lambda c=coded: c()[0])))
                entries.append(Entry(f"{part}::scale_ranges", "F16", (-(-groups // SCALE_BLOCK), 2),
                                     None if dry else (lambda c=coded: c()[1])))
            else:
                entries.append(Entry(f"{part}::scales", "F16", (groups,), None if dry else (lambda q=q, p=part: q()[p].scales)))
            if not pspec.symmetric:
                entries.append(Entry(f"{part}::offsets", "F16", (groups,), None if dry else (lambda q=q, p=part: q()[p].offsets)))
            if pspec.scheme == "apot":
                entries.append(Entry(f"{part}::table", "F32", (2 ** pspec.bits,), None if dry else (lambda q=q, p=part: q()[p].table)))
        if split is not None:
            entries.append(Entry(name + ROWS_SUFFIX, "I32", (len(split.rows),),
                                 None if dry else (lambda split=split: torch.tensor(split.rows, dtype=torch.int32))))
    if tokenizer_blob is not None:
        blob = torch.frombuffer(bytearray(tokenizer_blob), dtype=torch.uint8)
        entries.append(Entry(TOKENIZER_KEY, "U8", (len(tokenizer_blob),), lambda: blob))
    entries.sort(key=lambda e: (ORDER[e.dtype], e.name))
    return entries, qmeta, tied, {n: {"formula": f, "shape": list(state[n].shape)} for n, f in generated.items()}


def _header(entries: list[Entry], metadata: dict[str, str]) -> bytes:
    header, offset = {}, 0
    for e in entries:
        header[e.name] = {"dtype": e.dtype, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    return raw + b" " * ((-len(raw)) % 8)  # safetensors pads the header to 8 bytes


def _activations(model: torch.nn.Module, plan: Plan, qmeta: dict) -> dict | None:
    if plan.activation_bits is None:
        return None
    from whisper_kdq.quant.activations import activation_layers

    return {"bits": plan.activation_bits, "granularity": "per-token", "symmetric": True,
            "layers": activation_layers(model, set(qmeta))}


def _metadata(model: torch.nn.Module, qmeta: dict, tied: dict, entries: list[Entry], checksum: str,
              activations: dict | None = None, generated: dict | None = None,
              compressed: list[str] | None = None) -> dict[str, str]:
    qbytes = sum(e.nbytes for e in entries if "::" in e.name)
    qweights = sum(int(np.prod(m["shape"])) for m in qmeta.values())
    extra = {} if activations is None else {"activations": json.dumps(activations, sort_keys=True)}
    extra.update({"generated": json.dumps(generated, sort_keys=True)} if generated else {})
    extra.update({"compressed": json.dumps({"codec": "xz", "tensors": compressed})} if compressed else {})
    version = format_version(activations=activations is not None, generated=bool(generated), qmeta=qmeta,
                             compressed=bool(compressed))
    return {
        "format": FORMAT_NAME,
        "format_version": version,
        **extra,
        "config": model.config.to_json_string(use_diff=False),
        "generation_config": model.generation_config.to_json_string(use_diff=False),
        "quantization": json.dumps(qmeta, sort_keys=True),
        "tied": json.dumps(tied, sort_keys=True),
        "tokenizer": f"{TOKENIZER_KEY}: tokenizer.json, xz-compressed",
        "bits_per_weight": f"{8 * qbytes / max(qweights, 1):.4f}",
        "checksum": checksum,
    }


_BLOBS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tokenizer_blob(processor) -> bytes:
    # xz at preset 9 takes seconds; a dry run and the write that follows share one result.
    tokenizer = processor.tokenizer
    if tokenizer not in _BLOBS:
        with tempfile.TemporaryDirectory() as d:
            tokenizer.save_pretrained(d)
            _BLOBS[tokenizer] = lzma.compress((Path(d) / "tokenizer.json").read_bytes(), preset=9)
    return _BLOBS[tokenizer]


def predict_packed(model: torch.nn.Module, plan: Plan, processor=None) -> dict:
    """What `save_packed` would write, without quantizing: per-tensor specs and bytes, exact file size."""
    blob_len = len(_tokenizer_blob(processor)) if processor is not None else 0
    entries, qmeta, tied, generated = _entries(model, plan, None, dry=True)
    if processor is not None:
        entries.append(Entry(TOKENIZER_KEY, "U8", (blob_len,)))
        entries.sort(key=lambda e: (ORDER[e.dtype], e.name))
    meta = _metadata(model, qmeta, tied, entries, _CHECKSUM_PLACEHOLDER, _activations(model, plan, qmeta), generated)
    # With codec xz the sizes are those before compression (what xz saves depends on the trained codes).
    return {**_summary(model, entries, qmeta, tied, 8 + len(_header(entries, meta))), "activation_bits": plan.activation_bits,
            "before_compression": plan.codec != "none", "plan": plan.as_dict()}


def _summary(model, entries: list[Entry], qmeta: dict, tied: dict, header_bytes: int) -> dict:
    state, _ = _unique_state(model)
    params = sum(t.numel() for t in state.values())
    payload = sum(e.nbytes for e in entries if e.name != TOKENIZER_KEY)
    qweights = sum(int(np.prod(m["shape"])) for m in qmeta.values())
    qbytes = sum(e.nbytes for e in entries if "::" in e.name)
    file_bytes = header_bytes + sum(e.nbytes for e in entries)
    per_tensor = {}
    for name, t in state.items():
        size = sum(e.nbytes for e in entries if e.name == name or e.name.startswith(f"{name}::"))
        per_tensor[name] = {"spec": qmeta[name] if name in qmeta else None, "shape": list(t.shape), "bytes": size}
    return {
        "file_bytes": file_bytes, "payload_bytes": payload, "header_bytes": header_bytes,
        "tokenizer_bytes": file_bytes - header_bytes - payload, "params": params,
        "quantized_params": qweights, "bits_per_weight_quantized": 8 * qbytes / max(qweights, 1),
        "bits_per_weight_file": 8 * file_bytes / params, "fp32_bytes": 4 * params, "fp16_bytes": 2 * params,
        "ratio_vs_fp32": 4 * params / file_bytes, "ratio_vs_fp16": 2 * params / file_bytes,
        "tied": tied, "tensors": per_tensor,
    }


def save_packed(out: Path, model: torch.nn.Module, processor, plan: Plan, *, force: bool = False,
                qparams: dict | None = None, column_weights: dict | None = None,
                quantized: dict | None = None) -> dict:
    """Quantize `model` by `plan` and write the packed checkpoint `out` atomically.

    `qparams` maps tensor names to learned (scale, offset) (from QAT); `column_weights` maps them to
    per-input-column error weights (from calibration); `quantized` maps them to tensors already
    quantized by the plan's spec (from GPTQ), written as they are. Returns the size summary."""
    out = Path(out)
    check_output(out, force)
    entries, qmeta, tied, generated = _entries(model, plan, _tokenizer_blob(processor), qparams, column_weights,
                                    quantized=quantized)
    data = [_bytes(e) for e in entries]
    compressed = _compress(entries, data) if plan.codec == "xz" else []
    digest = hashlib.sha256()
    for chunk in data:
        digest.update(chunk)
    header = _header(entries, _metadata(model, qmeta, tied, entries, "sha256:" + digest.hexdigest(),
                                        _activations(model, plan, qmeta), generated, compressed))
    with atomic_file(out) as tmp:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(header)))
            f.write(header)
            for chunk in data:
                f.write(chunk)
        tmp.chmod(0o644)  # mkstemp creates 0600; a checkpoint is an ordinary shareable file
    summary = _summary(model, entries, qmeta, tied, 8 + len(header))
    summary["compressed_streams"] = len(compressed)
    summary["plan"] = plan.as_dict()
    summary["activation_bits"] = plan.activation_bits
    return summary


def _compress(entries: list[Entry], data: list[bytes]) -> list[str]:
    """xz-compress every code stream in place (entries and data) where that is smaller; the names compressed.
    Trained codes are far from uniform (a 2-bit embedding's cold rows carry ~1.2 bits a code), and a general
    compressor takes that without a format of our own: any xz tool reads the streams."""
    names = []
    for i, (e, raw) in enumerate(zip(entries, data)):
        if not e.name.endswith("::codes"):
            continue
        # No xz integrity check: the file's checksum covers the stream already.
        z = lzma.compress(raw, format=lzma.FORMAT_XZ, check=lzma.CHECK_NONE, preset=9 | lzma.PRESET_EXTREME)
        if len(z) < len(raw):
            entries[i], data[i] = replace(e, shape=(len(z),)), z
            names.append(e.name)
    return names


def quantized_copy(model: torch.nn.Module, plan: Plan) -> torch.nn.Module:
    """A deep copy of `model` whose planned weights are replaced by their quantize-dequantize, in
    memory: what loading the packed file must reproduce."""
    import copy

    clone = copy.deepcopy(model)
    state, _ = _unique_state(clone)
    specs, splits = plan.resolve(state), plan.splits(state)
    clip = plan.clip if plan.clip != "output" else "mse"
    generated = generated_tensors(state)  # the file rebuilds these exactly: no quantization error
    with torch.no_grad():
        for name, spec in specs.items():
            if spec is not None and name not in generated:
                t, split = state[name], splits.get(name)
                w = t.detach().float().cpu()
                if split is None:
                    deq = dequantize(quantize(w, spec, clip))
                else:
                    deq = dequantize_split(*quantize_split(w, spec, split, clip), split)
                t.copy_(deq.to(t.dtype))
    if plan.activation_bits is not None:
        from whisper_kdq.quant.activations import quantize_planned_activations

        quantize_planned_activations(clone, plan.activation_bits, specs)
    return clone


def _bytes(e: Entry) -> bytes:
    t = e.make().contiguous()
    assert str(t.dtype) == str(DTYPES[e.dtype][0]) and t.numel() * t.element_size() == e.nbytes, e.name
    return t.numpy().tobytes()
