"""Calibration: statistics of each linear layer's inputs, from decoding a few clips.

For a linear layer y = x W^T, the output error of a weight perturbation D is E||x D^T||^2 =
tr(D H D^T) with H = E[x x^T]. GPTQ (`gptq.py`) uses the whole H (`input_hessians`); the output-MSE
clipping search keeps only its diagonal, the energy of each input column (`input_energy`), which
weights each weight's squared error in `choose_params` (`column_weight`).

Clips are taken in turn from each language (`Dataset.spread`), so a manifest sorted by language
calibrates on every language in it. Decoding is greedy (`generate`): the decoder's layers see their own outputs.
"""

from __future__ import annotations

from typing import Callable

import torch

from whisper_kdq.data.manifest import Dataset
from whisper_kdq.models.refs import quiet_transformers

__all__ = ["input_energy", "input_hessians"]


def _collect(model: torch.nn.Module, processor, dataset: Dataset, limit: int, max_new_tokens: int,
             stat: Callable[[torch.Tensor], torch.Tensor], names: set[str] | None) -> dict[str, torch.Tensor]:
    """{`<linear>.weight`: mean of `stat(x)` over calibration tokens} for the linear layers in `names`
    (every one but the output projection when None)."""
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    hooks = []
    for name, module in model.named_modules():
        key = f"{name}.weight"
        if isinstance(module, torch.nn.Linear) and name != "proj_out" and (names is None or key in names):
            def hook(mod, args, out, key=key):
                x = args[0].detach().float().reshape(-1, args[0].shape[-1])
                sums[key] = sums.get(key, 0) + stat(x)
                counts[key] = counts.get(key, 0) + x.shape[0]
            hooks.append(module.register_forward_hook(hook))
    try:
        with quiet_transformers(), torch.inference_mode():
            for utt in dataset.spread(limit).utterances:
                features = processor(utt.load(), sampling_rate=16000, return_tensors="pt").input_features
                model.generate(features.to(model.device), language=utt.language, task="transcribe",
                               max_new_tokens=max_new_tokens)
    finally:
        for h in hooks:
            h.remove()
    return {k: (sums[k] / counts[k]).cpu() for k in sums}


def input_energy(model: torch.nn.Module, processor, dataset: Dataset, limit: int = 8,
                 max_new_tokens: int = 48) -> dict[str, torch.Tensor]:
    """{`<linear>.weight`: mean x_j^2 over calibration tokens}: the diagonal of H."""
    return _collect(model, processor, dataset, limit, max_new_tokens, lambda x: (x * x).sum(dim=0), None)


def input_hessians(model: torch.nn.Module, processor, dataset: Dataset, names: set[str], limit: int = 32,
                   max_new_tokens: int = 48) -> dict[str, torch.Tensor]:
    """{`<linear>.weight`: H = mean x x^T over calibration tokens} for the layers in `names`."""
    return _collect(model, processor, dataset, limit, max_new_tokens, lambda x: x.T @ x, names)
