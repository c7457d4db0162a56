"""Calibration for the output-MSE clipping search: the energy of each linear layer's input columns.

For a linear layer y = x W^T, the output error of a weight perturbation D is E||x D^T||^2 =
sum_ij D_ij D_ik E[x_j x_k]; keeping only the diagonal of E[x x^T] weights each weight's squared
error by the mean square of its input column. That per-column weight is what `choose_params`
takes (`column_weight`), so the clip of every group minimises this (diagonal) output error.
"""

from __future__ import annotations

import torch

from whisper_kdq.data.manifest import Dataset

__all__ = ["input_energy"]


def input_energy(model: torch.nn.Module, processor, dataset: Dataset, limit: int = 8,
                 max_new_tokens: int = 48) -> dict[str, torch.Tensor]:
    """{`<linear>.weight`: mean x_j^2 over calibration tokens} from greedy decoding of `limit` clips."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "proj_out":
            def hook(mod, args, out, key=f"{name}.weight"):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                sums[key] = sums.get(key, 0) + (x * x).sum(dim=0)
                counts[key] = counts.get(key, 0) + x.shape[0]
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for utt in dataset.utterances[:limit]:
                features = processor(utt.load(), sampling_rate=16000, return_tensors="pt").input_features
                model.generate(features.to(model.device), language=utt.language, task="transcribe",
                               max_new_tokens=max_new_tokens)
    finally:
        for h in hooks:
            h.remove()
    return {k: (sums[k] / counts[k]).cpu() for k in sums}
