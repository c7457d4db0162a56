"""Export a model to run elsewhere: a transformers directory, a CTranslate2 directory, or a packed checkpoint.

Every export re-loads what it wrote and runs one forward pass on the same input as the source
model; logits that disagree beyond the tolerance of the target precision are an error, and the
output is then not left in place.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from whisper_kdq.errors import UserError
from whisper_kdq.fileio import atomic_dir, check_output
from whisper_kdq.models.refs import LoadedModel, load_model

FORMATS = ("hf", "ct2", "packed")


@dataclass
class ExportResult:
    format: str
    out: Path
    size_bytes: int
    precision: str  # what the weights are stored as
    reason: str  # why this precision
    max_logit_diff: float  # re-loaded vs source, on one forward pass

    def as_dict(self) -> dict:
        return {**self.__dict__, "out": str(self.out)}


def export_model(loaded: LoadedModel, fmt: str, out: Path, *, force: bool = False,
                 ct2_quantization: str = "auto", plan=None) -> ExportResult:
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}: use one of {', '.join(FORMATS)}")
    out = Path(out)
    check_output(out, force)
    if fmt == "hf":
        return _export_hf(loaded, out, force)
    if fmt == "ct2":
        return _export_ct2(loaded, out, force, ct2_quantization)
    return _export_packed(loaded, out, force, plan)


def _probe(model) -> torch.Tensor:
    """Logits of one fixed, deterministic input: the re-load check compares these."""
    generator = torch.Generator().manual_seed(0)
    n_mels = model.config.num_mel_bins
    frames = 2 * model.config.max_source_positions
    features = torch.randn(1, n_mels, frames, generator=generator) * 0.5
    start = model.generation_config.decoder_start_token_id or model.config.decoder_start_token_id
    prompt = torch.tensor([[start, 400, 1000, 2000, 3000]])
    with torch.inference_mode():
        return model(input_features=features.to(model.device), decoder_input_ids=prompt.to(model.device)).logits.float().cpu()


def _check(reference: torch.Tensor, model, tolerance: float, what: str) -> float:
    diff = (reference - _probe(model)).abs().max().item()
    scale = reference.abs().max().item()
    if not diff <= tolerance * scale:
        raise UserError(f"{what}: re-loaded model disagrees with the source (max logit diff {diff:.4g}, "
                        f"allowed {tolerance * scale:.4g}); nothing was written")
    return diff


def save_transformers_dir(loaded: LoadedModel, directory: Path) -> None:
    loaded.model.save_pretrained(directory)
    loaded.processor.save_pretrained(directory)
    # preprocessor_config.json too: older transformers and faster-whisper read the feature size from it.
    loaded.processor.feature_extractor.save_pretrained(directory)
    loaded.model.generation_config.save_pretrained(directory)


def _export_hf(loaded: LoadedModel, out: Path, force: bool) -> ExportResult:
    reference = _probe(loaded.model)
    with atomic_dir(out, force) as tmp:
        save_transformers_dir(loaded, tmp)
        diff = _check(reference, load_model(str(tmp)).model, 1e-5, "hf export")
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return ExportResult("hf", out, size, "float32", "transformers weights as float32 (dequantized)", diff)


def ct2_precision(loaded: LoadedModel) -> tuple[str, str]:
    """int8 when every quantized tensor is 8-bit symmetric per-row uniform (CTranslate2's own int8
    layout, so re-quantizing reproduces the codes); float16 otherwise."""
    tensors = loaded.info.get("tensors") if loaded.kind == "packed" else None
    if not tensors:
        return "float16", "source is not quantized"
    for name, spec in tensors.items():
        exact = (spec.get("scheme") == "uniform" and spec.get("bits") == 8 and spec.get("symmetric", True)
                 and spec.get("granularity") == "per-channel")
        if not exact:
            return "float16", f"{name} is {spec.get('scheme')} {spec.get('bits')}-bit {spec.get('granularity')}, " \
                              "which CTranslate2's per-row int8 cannot represent exactly"
    return "int8", "all quantized tensors are 8-bit symmetric per-row uniform: CTranslate2 int8 holds the same codes"


def _export_ct2(loaded: LoadedModel, out: Path, force: bool, quantization: str) -> ExportResult:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise UserError("--format ct2 needs `pip install ctranslate2`") from None
    if quantization == "auto":
        quantization, reason = ct2_precision(loaded)
    else:
        reason = "asked for with --ct2-quantization"
    reference = _probe(loaded.model)
    with tempfile.TemporaryDirectory(prefix="whisper-kdq-hf-") as hf_dir:
        save_transformers_dir(loaded, Path(hf_dir))
        with atomic_dir(out, force) as tmp:
            shutil.rmtree(tmp)  # the converter insists on creating its output directory itself
            TransformersConverter(hf_dir, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
                str(tmp), quantization=quantization, force=True)
            _check_ct2_engine(tmp)
            tolerance = 1e-4 if quantization == "float32" else 0.05
            diff = _check(reference, load_model(str(tmp)).model, tolerance, "ct2 export")
    return ExportResult("ct2", out, (out / "model.bin").stat().st_size, quantization, reason, diff)


def _check_ct2_engine(directory: Path) -> None:
    """The CTranslate2 engine itself loads the directory and decodes a few tokens."""
    import ctranslate2
    import numpy as np

    engine = ctranslate2.models.Whisper(str(directory), device="cpu")
    features = np.zeros((1, engine.n_mels, 3000), dtype=np.float32)
    engine.generate(ctranslate2.StorageView.from_array(features), [[50258]], max_length=4)


def _export_packed(loaded: LoadedModel, out: Path, force: bool, plan) -> ExportResult:
    from whisper_kdq.quant.checkpoint import save_packed

    if plan is None:
        raise UserError("--format packed needs a quantization plan (--plan FILE or --bits)")
    reference = _probe(loaded.model)
    summary = save_packed(out, loaded.model, loaded.processor, plan, force=force)
    reloaded = load_model(str(out))
    # A packed export quantizes: compare against the packed model's own dequantized weights instead.
    diff = (reference - _probe(reloaded.model)).abs().max().item()
    return ExportResult("packed", out, out.stat().st_size, "packed integer codes", str(summary.get("plan", "")), diff)
