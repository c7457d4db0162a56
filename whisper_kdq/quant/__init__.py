"""Quantization: schemes (math) · packing (bits) · plan (who gets which bits) · checkpoint / reader (file format) · fake (QAT).

    from whisper_kdq.quant import plan_from_options, save_packed
    save_packed("base-u4.safetensors", model, processor, plan_from_options(bits=4))
"""

from whisper_kdq.quant.checkpoint import FORMAT_VERSION, predict_packed, save_packed
from whisper_kdq.quant.reader import load_packed
from whisper_kdq.quant.plan import Plan, load_plan, plan_from_options
from whisper_kdq.quant.schemes import QTensor, QuantSpec, dequantize, parse_spec, quantize, quantizer_for

__all__ = ["FORMAT_VERSION", "load_packed", "predict_packed", "save_packed", "Plan", "load_plan", "plan_from_options",
           "QTensor", "QuantSpec", "dequantize", "parse_spec", "quantize", "quantizer_for"]
