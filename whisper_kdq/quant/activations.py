"""Activation quantization, when asked for: the inputs of quantized linear layers rounded per token.

Weights are what the packed file shrinks; activations stay float unless a plan says
`"activations": {"bits": N}` (`--act-bits N`). Then every linear layer whose weight is quantized sees
its input rounded symmetrically to N bits with one scale per token (row): scale = max|x| / (2^(N-1) - 1),
computed on the fly. This is the arithmetic of CTranslate2's int8 engine (dynamic per-row int8
activations), so `--act-bits 8` trains and evaluates what a W8A8 runtime computes. Nothing is learned
and nothing but the bit width and the layer names is stored; gradients pass straight through.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
from torch import nn

from whisper_kdq.errors import UserError

ACTIVATION_BITS = range(4, 9)  # below 4 bits per-token rounding of whisper's activations is unusable


def check_activation_bits(bits: object, where: str = "--act-bits") -> int:
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in ACTIVATION_BITS:
        raise UserError(f"{where}: activation bits must be an integer from {ACTIVATION_BITS[0]} to "
                        f"{ACTIVATION_BITS[-1]}, got {bits!r}")
    return bits


def fake_quant_tokens(x: torch.Tensor, bits: int) -> torch.Tensor:
    """`x` rounded to `bits` bits per row of its last dimension (symmetric, dynamic); straight-through."""
    qmax = 2 ** (bits - 1) - 1
    scale = x.detach().abs().amax(dim=-1, keepdim=True).clamp(min=torch.finfo(x.dtype).tiny) / qmax
    q = torch.clamp(torch.round(x.detach() / scale), -qmax, qmax) * scale
    return x + (q - x).detach()


class RoundInputs:
    """Forward pre-hook of one linear layer. A plain object rather than a closure, so that a deep copy
    of the model (checkpoint selection, float copies) carries its own hooks and no handles."""

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.enabled = True

    def __call__(self, module: nn.Module, args: tuple) -> tuple:
        if not self.enabled:
            return args
        return (fake_quant_tokens(args[0], self.bits), *args[1:])


def activation_layers(model: nn.Module, quantized_weights: set[str]) -> list[str]:
    """Names of the linear modules whose weight is quantized; `proj_out` when the token embedding it is
    tied to is quantized (the output projection computes with that weight)."""
    names = [name for name, m in model.named_modules()
             if isinstance(m, nn.Linear) and f"{name}.weight" in quantized_weights]
    if "model.decoder.embed_tokens.weight" in quantized_weights and isinstance(getattr(model, "proj_out", None), nn.Linear):
        names.append("proj_out")
    return names


def quantize_planned_activations(model: nn.Module, bits: int, specs: dict) -> nn.Module:
    """`quantize_activations` on the layers whose weight `specs` (a plan resolved on `model`) quantizes."""
    return quantize_activations(model, activation_layers(model, {n for n, s in specs.items() if s is not None}), bits)


def _hooks(model: nn.Module) -> Iterator[tuple[str, nn.Module, int, RoundInputs]]:
    for name, module in model.named_modules():
        for key, hook in list(module._forward_pre_hooks.items()):
            if isinstance(hook, RoundInputs):
                yield name, module, key, hook


def quantize_activations(model: nn.Module, layers: list[str], bits: int) -> nn.Module:
    """Round the inputs of `layers` (module names) to `bits` bits per token from now on; returns `model`."""
    check_activation_bits(bits)
    remove_activation_quantization(model)
    modules = dict(model.named_modules())
    for name in layers:
        if name not in modules:
            raise UserError(f"activation quantization: the model has no layer {name!r}")
        modules[name].register_forward_pre_hook(RoundInputs(bits))
    return model


def remove_activation_quantization(model: nn.Module) -> None:
    for _, module, key, _ in list(_hooks(model)):
        del module._forward_pre_hooks[key]


def activation_settings(model: nn.Module) -> dict | None:
    """`{"bits", "layers"}` of a model whose activations are quantized, else None."""
    found = [(name, hook.bits) for name, _, _, hook in _hooks(model)]
    return None if not found else {"bits": found[0][1], "layers": [name for name, _ in found]}


@contextlib.contextmanager
def float_activations(model: nn.Module) -> Iterator[nn.Module]:
    """Run `model` with float activations for a while (e.g. to compare with a runtime that has no
    activation quantization)."""
    hooks = [hook for _, _, _, hook in _hooks(model)]
    for hook in hooks:
        hook.enabled = False
    try:
        yield model
    finally:
        for hook in hooks:
            hook.enabled = True
