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


def _reference(loaded: LoadedModel, engine_activation_bits: int | None) -> tuple[torch.Tensor, str]:
    """Logits the re-loaded export must reproduce, and a note on activations. The re-load check runs the
    export's weights in transformers with float activations, so a source whose activations are rounded
    per token (`--act-bits`) is probed with float activations too; the note says what the target engine
    computes (CTranslate2's int8 rounds each row of a linear layer's input to 8 bits, like `--act-bits 8`)."""
    from whisper_kdq.quant.activations import activation_settings, float_activations

    settings = activation_settings(loaded.model)
    if settings is None:
        return _probe(loaded.model), ""
    with float_activations(loaded.model):
        reference = _probe(loaded.model)
    bits = settings["bits"]
    if engine_activation_bits == bits:
        return reference, f"; the engine rounds activations to {bits} bits per row at run time, as the source does"
    engine = "float" if engine_activation_bits is None else f"{engine_activation_bits}-bit per row"
    return reference, f"; activations {engine} in this format (the source rounds them to {bits} bits per token)"


def _export_hf(loaded: LoadedModel, out: Path, force: bool) -> ExportResult:
    reference, note = _reference(loaded, None)
    with atomic_dir(out, force) as tmp:
        save_transformers_dir(loaded, tmp)
        diff = _check(reference, load_model(str(tmp)).model, 1e-5, "hf export")
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    return ExportResult("hf", out, size, "float32", "transformers weights as float32 (dequantized)" + note, diff)


def ct2_precision(loaded: LoadedModel) -> tuple[str, str]:
    """int8 when every quantized tensor is 8-bit symmetric per-row uniform (CTranslate2's own int8
    layout, so re-quantizing reproduces the codes) and no linear/embedding weight was left float
    (CTranslate2 would quantize it); float16 otherwise."""
    tensors = loaded.info.get("tensors") if loaded.kind == "packed" else None
    if not tensors:
        return "float16", "source is not quantized"
    for name, spec in tensors.items():
        exact = (spec.get("scheme") == "uniform" and spec.get("bits") == 8 and spec.get("symmetric", True)
                 and spec.get("granularity") == "per-channel" and not spec.get("full_range") and "rows" not in spec)
        if not exact:
            rows = f" with {spec['rows']['count']} rows at {spec['rows']['bits']} bits" if "rows" in spec else ""
            return "float16", f"{name} is {spec.get('scheme')} {spec.get('bits')}-bit {spec.get('granularity')}{rows}, " \
                              "which CTranslate2's per-row int8 cannot represent exactly"
    left_float = loaded.info.get("float_weights") or []
    if left_float:
        return "float16", f"{left_float[0]} was kept float; CTranslate2 int8 would quantize it"
    return "int8", "all quantized tensors are 8-bit symmetric per-row uniform: CTranslate2 int8 holds the same codes"


def _export_ct2(loaded: LoadedModel, out: Path, force: bool, quantization: str) -> ExportResult:
    try:
        from ctranslate2.converters import TransformersConverter
    except ImportError:
        raise UserError("--format ct2 needs `pip install ctranslate2`") from None
    exact, why = ct2_precision(loaded)
    if quantization == "auto":
        quantization, reason = exact, why
    else:
        reason = "asked for with --ct2-quantization"
    # int8 asked for on a source whose codes CTranslate2 cannot hold (e.g. 4-bit groups): the converter
    # re-quantizes the dequantized weights, a second rounding on top of the first; allowed twice the
    # drift of an int8 export of a float model, and said so.
    lossy = quantization.startswith("int8") and loaded.kind == "packed" and exact != "int8"
    if lossy:
        reason += "; lossy: CTranslate2 re-quantized the dequantized weights to its per-row int8"
    # CTranslate2's int8 rounds each row of a linear layer's input to 8 bits, as `--act-bits 8` does.
    reference, note = _reference(loaded, 8 if quantization.startswith("int8") else None)
    reason += note
    with tempfile.TemporaryDirectory(prefix="whisper-kdq-hf-") as hf_dir:
        save_transformers_dir(loaded, Path(hf_dir))
        with atomic_dir(out, force) as tmp:
            shutil.rmtree(tmp)  # the converter insists on creating its output directory itself
            TransformersConverter(hf_dir, copy_files=["tokenizer.json", "preprocessor_config.json"]).convert(
                str(tmp), quantization=quantization, force=True)
            _check_ct2_engine(tmp)
            tolerance = 1e-4 if quantization == "float32" else (0.10 if lossy else 0.05)
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
    """Quantize by `plan`, write the packed file, re-load it and check it against the in-memory
    dequantized model (the packed file must reproduce exactly what was quantized)."""
    from whisper_kdq.quant.checkpoint import quantized_copy, save_packed
    from whisper_kdq.quant.reader import load_packed

    if plan is None:
        raise UserError("--format packed needs a quantization plan (--plan FILE); or use `whisper-kdq quantize`")
    if out.suffix != ".safetensors":
        raise UserError(f"--format packed writes one file: give --out a .safetensors name, not {out}")
    summary = save_packed(out, loaded.model, loaded.processor, plan, force=force)
    try:
        reference = _probe(quantized_copy(loaded.model, plan))
        reloaded = load_packed(out, device=str(loaded.model.device))
        diff = _check(reference, reloaded.model, 1e-5, "packed export")
    except Exception:
        out.unlink(missing_ok=True)  # a file that does not reload as written is not left in place
        raise
    reason = f"{summary['bits_per_weight_quantized']:.2f} bits per quantized weight, {summary['ratio_vs_fp32']:.2f}x vs fp32"
    return ExportResult("packed", out, out.stat().st_size, "packed integer codes", reason, diff)
