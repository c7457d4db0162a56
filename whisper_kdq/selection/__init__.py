"""Guided layer selection: which blocks (or weight matrices) to quantize at low bits and which to distil (`select-layers`)."""

from __future__ import annotations

from typing import Callable

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.quant.schemes import QuantSpec
from whisper_kdq.selection.choose import STRATEGIES, Selection, build_plan, choose
from whisper_kdq.selection.sensitivity import calibration_batches, distillation_losses, quantization_losses
from whisper_kdq.selection.units import Unit, layer_units

__all__ = ["STRATEGIES", "Selection", "Unit", "select_layers", "layer_units", "build_plan"]


def select_layers(student, calibration: Dataset, *, teacher=None, strategy: str = "guided", low: QuantSpec,
                  high: QuantSpec | None, target_bytes: int | None = None, low_fraction: float | None = None,
                  distill_fraction: float = 0.5, seed: int = 0, batch_size: int = 8, device: str = "cpu",
                  granularity: str = "block", progress: Callable[[str], None] | None = None,
                  row_rules: list | None = None) -> Selection:
    """Measure the per-unit losses on `calibration` (guided only) and choose bits and distilled blocks.

    `student` and `teacher` are `LoadedModel`s; without a teacher the distillation losses are not
    measured (the student is its own reference, as in post-training quantization). `granularity`:
    bits per block, or per weight matrix (`linear`). `row_rules` (e.g. the token embedding's frequent rows at
    more bits, `quant.rows.embedding_row_rule`) go into every plan, so the sizes count them."""
    from whisper_kdq.quant.checkpoint import predict_packed

    units = layer_units(student.model, granularity)
    if strategy == "guided":
        batches = calibration_batches(calibration, student.processor, batch_size, device)
        quantization_losses(student.model, units, low, batches, progress)
        if teacher is not None:
            if progress:
                progress("distillation losses")
            distillation_losses(student.model, teacher.model, units, batches)

    def size_of(plan) -> int:
        return predict_packed(student.model, plan, student.processor)["file_bytes"]

    return choose(units, strategy, high=high, low=low, size_of=size_of, target_bytes=target_bytes,
                  low_fraction=low_fraction, distill_fraction=distill_fraction, seed=seed, row_rules=row_rules)
