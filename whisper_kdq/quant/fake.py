"""Fake quantization for quantization-aware training, built on the same schemes as the packed file.

`prepare_qat(model, plan)` puts a `FakeQuantWeight` parametrization on every planned weight: the
forward sees `level(w) * s + offset` (nearest level of the scheme's table, straight-through
gradient to w), with a learnable per-group scale s = the clipping value (LSQ for uniform, APoT's
alpha), its gradient scaled by 1/sqrt(group_len * top_level) as in LSQ. `convert_to_packed` writes
the packed checkpoint with the learned scales, so its logits equal the fake-quant forward.
"""

from __future__ import annotations

import abc
import copy
import math
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn
from torch.nn.utils import parametrize

from whisper_kdq.quant.generated import generated_tensors
from whisper_kdq.quant.plan import Plan
from whisper_kdq.quant.rows import ROWS_SUFFIX, RowSplit, dequantize_split, merge_rows, split_rows
from whisper_kdq.quant.scales import stored_scales
from whisper_kdq.quant.schemes import QTensor, QuantSpec, _sorted_levels, choose_params, dequantize

__all__ = ["FakeQuantWeight", "RowSplitFakeQuant", "prepare_qat", "qat_modules", "qat_params", "convert_to_packed",
           "computed_once", "matching_init"]

_memo: dict[int, torch.Tensor] | None = None


@contextmanager
def computed_once():
    """Within this context every fake-quantized weight is computed once, however many modules read it: the
    token embedding and the output projection tied to it are one 26M-weight tensor in whisper, read twice
    per forward. Use it around one forward pass (its backward may run after the context ends)."""
    global _memo
    outer, _memo = _memo, {}
    try:
        yield
    finally:
        _memo = outer


def _grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Value ~x, gradient g * dx (LSQ's step-size gradient scale); only its gradient is used."""
    return x * g


class _Memoized(nn.Module, abc.ABC):
    """A parametrization whose value `_fake_quantize(w)` is computed once per `computed_once` context
    (an abstract base: `FakeQuantWeight` and `RowSplitFakeQuant` say how)."""

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if _memo is not None and id(self) in _memo:
            return _memo[id(self)]
        out = self._fake_quantize(w)
        if _memo is not None:
            _memo[id(self)] = out
        return out

    @abc.abstractmethod
    def _fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        """The fake-quantized weight (straight-through gradients)."""


class FakeQuantWeight(_Memoized):
    """Parametrization: weight -> fake-quantized weight (STE), with a learnable per-group scale."""

    def __init__(self, weight: torch.Tensor, spec: QuantSpec, clip: str = "mse", grad_scaling: bool = True,
                 params: tuple[torch.Tensor, torch.Tensor | None] | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.shape = tuple(weight.shape)
        # The starting grid: the clip search's, or given (e.g. GPTQ's, whose codes the weight already sits on).
        if params is None:
            scale, offset = choose_params(weight, spec, clip)
        else:
            scale, offset = params[0].float(), None if params[1] is None else params[1].float()
        self.scale = nn.Parameter(scale.clone())  # learned clipping: stored as is in the packed file
        self.register_buffer("offset", None if offset is None else offset.clone())
        values, _ = _sorted_levels(spec)
        self.register_buffer("levels", values.clone(), persistent=False)
        self.register_buffer("midpoints", (values[1:] + values[:-1]) / 2, persistent=False)
        group_len = weight.numel() // scale.numel()
        self.grad_factor = 1.0 / math.sqrt(group_len * float(values.abs().max())) if grad_scaling else 1.0

    def _groups(self, w: torch.Tensor) -> torch.Tensor:
        # Like schemes.to_groups, but differentiable and zero-padded (NaN would poison the gradients).
        x = w.reshape(self.shape[0], -1)
        if self.spec.granularity == "per-tensor":
            return x.reshape(1, -1)
        if self.spec.granularity == "per-channel":
            return x
        pad = (-x.shape[1]) % self.spec.group_size
        return nn.functional.pad(x, (0, pad)).reshape(-1, self.spec.group_size)

    def _fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        x = self._groups(w)
        # Forward value: exactly the scale the file stores (fp16 or 8-bit); gradient: LSQ-scaled, to self.scale.
        g = _grad_scale(self.scale, self.grad_factor)
        s = stored_scales(self.scale.detach(), self.spec.scale_bits) + (g - g.detach())
        offset = None if self.offset is None else self.offset.to(x.dtype)
        y = (x if offset is None else x - offset[:, None]) / s[:, None]
        y = torch.clamp(y, float(self.levels[0]), float(self.levels[-1]))  # clipped: grad goes to s only
        if self.spec.scheme == "uniform":  # integer levels: round half to even, exactly as the packed encoder
            nearest = torch.round(y.detach())
        else:
            nearest = self.levels[torch.bucketize(y.detach(), self.midpoints)]
        y = nearest + (y - y.detach())  # straight-through rounding; the value is exactly the level
        out = y * s[:, None]
        if offset is not None:
            out = out + offset[:, None]
        rows = self.shape[0]
        return out.reshape(rows, -1)[:, : w[0].numel()].reshape(self.shape)


class RowSplitFakeQuant(_Memoized):
    """Parametrization of a row-split weight: the listed rows and the others fake-quantized each as a matrix
    of their own (two `FakeQuantWeight`s, `listed` and `others`), as the packed file stores them."""

    def __init__(self, weight: torch.Tensor, spec: QuantSpec, split: RowSplit, clip: str = "mse",
                 grad_scaling: bool = True, params=None, listed_params=None) -> None:
        super().__init__()
        self.split = split
        listed, others = split_rows(weight, split)
        self.listed = FakeQuantWeight(listed, split.spec, clip, grad_scaling, listed_params)
        self.others = FakeQuantWeight(others, spec, clip, grad_scaling, params)

    def _fake_quantize(self, w: torch.Tensor) -> torch.Tensor:
        listed, others = split_rows(w, self.split)
        return merge_rows(self.listed._fake_quantize(listed), self.others._fake_quantize(others), self.split)


def _params(q: QTensor | None) -> tuple | None:
    return None if q is None else (q.scales, q.offsets)


def prepare_qat(model: nn.Module, plan: Plan, clip: str | None = None, grad_scaling: bool = True,
                init: dict[str, QTensor] | None = None) -> nn.Module:
    """Fake-quantize, in place, every weight `plan` quantizes (and, if the plan asks, the inputs of those
    layers per token); returns `model`. Tied weights (the token embedding and `proj_out`) share one
    parametrization, so they stay one tensor. `init` (e.g. from GPTQ) gives some weights their starting
    codes and scales: the weight is set to their dequantized value and the scales start as theirs."""
    state = model.state_dict()
    generated = generated_tensors(state)  # a packed file rebuilds these exactly: train on what it will hold
    specs = {n: s for n, s in plan.resolve(state).items() if n not in generated}
    splits, init = plan.splits(state), init or {}
    if plan.activation_bits is not None:
        from whisper_kdq.quant.activations import quantize_planned_activations

        quantize_planned_activations(model, plan.activation_bits, specs)
    shared: dict[int, FakeQuantWeight] = {}
    modules = dict(model.named_modules())
    for name, module in modules.items():
        weight = getattr(module, "weight", None)
        if not isinstance(weight, nn.Parameter) or parametrize.is_parametrized(module, "weight"):
            continue
        key = id(weight)
        spec = specs.get(f"{name}.weight")
        if spec is None and key not in shared:
            continue
        split = splits.get(f"{name}.weight")
        if key not in shared and split is not None:
            q, ql = init.get(f"{name}.weight"), init.get(f"{name}.weight{ROWS_SUFFIX}")
            if q is not None and ql is not None:
                with torch.no_grad():
                    weight.copy_(dequantize_split(q, ql, split).to(weight.device, weight.dtype))
            else:
                q = ql = None
            shared[key] = RowSplitFakeQuant(weight.detach(), spec, split, clip or _clip(plan), grad_scaling,
                                            _params(q), _params(ql)).to(weight.device)
        if key not in shared:
            q = init.get(f"{name}.weight")
            if q is not None:
                if q.spec != spec:
                    raise ValueError(f"{name}.weight: initial codes are {q.spec.short}, the plan says {spec.short}")
                with torch.no_grad():
                    weight.copy_(dequantize(q).to(weight.device, weight.dtype))
            shared[key] = FakeQuantWeight(weight.detach(), spec, clip or _clip(plan), grad_scaling,
                                          _params(q)).to(weight.device)
        parametrize.register_parametrization(module, "weight", shared[key], unsafe=True)
    return model


def _clip(plan: Plan) -> str:
    return "mse" if plan.clip == "output" else plan.clip


def qat_modules(model: nn.Module) -> dict[str, FakeQuantWeight]:
    """`{weight name: its FakeQuantWeight}` for every fake-quantized weight (tied copies not repeated); a
    row-split weight gives NAME (its unlisted rows) and NAME::rows (the listed rows)."""
    out, seen = {}, set()
    for name, module in model.named_modules():
        if parametrize.is_parametrized(module, "weight"):
            fq = module.parametrizations.weight[0]
            if id(fq) in seen:
                continue
            seen.add(id(fq))
            if isinstance(fq, FakeQuantWeight):
                out[f"{name}.weight"] = fq
            elif isinstance(fq, RowSplitFakeQuant):
                out[f"{name}.weight"], out[f"{name}.weight{ROWS_SUFFIX}"] = fq.others, fq.listed
    return out


def matching_init(codes: dict[str, QTensor], plan: Plan, state: dict[str, torch.Tensor]) -> dict[str, QTensor]:
    """The parts of `codes` (e.g. a packed file's) that fit `plan` as it quantizes `state`: same spec, same
    shape and, for a row split, the same rows; `prepare_qat(init=...)` starts those weights from them."""
    specs, splits = plan.resolve(state), plan.splits(state)
    out = {}
    for name, spec in specs.items():
        split, q = splits.get(name), codes.get(name)
        if spec is None or q is None or q.spec != spec:
            continue
        shape = tuple(state[name].shape)
        if split is None and tuple(q.shape) == shape and q.rows is None:
            out[name] = q
        elif split is not None:
            ql = codes.get(name + ROWS_SUFFIX)
            if ql is not None and ql.spec == split.spec and ql.rows == split.rows:
                out[name], out[name + ROWS_SUFFIX] = q, ql
    return out


def qat_params(model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor | None]]:
    """Learned `(scale, offset)` per weight name, as `save_packed(qparams=...)` takes them."""
    return {name: (fq.scale.detach().cpu(), None if fq.offset is None else fq.offset.cpu())
            for name, fq in qat_modules(model).items()}


def float_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` with the parametrizations removed: the latent float weights, in place."""
    clone = copy.deepcopy(model)
    for module in clone.modules():
        if parametrize.is_parametrized(module, "weight"):
            # A deep copy shares the parametrized class with `model`, and removing a parametrization
            # deletes its property from the class: `model` would lose its weights. A class of its own first.
            cls = module.__class__
            module.__class__ = type(cls.__name__, cls.__bases__,
                                    {k: v for k, v in cls.__dict__.items() if k not in ("__dict__", "__weakref__")})
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=False)
    return clone


def convert_to_packed(model: nn.Module, processor, plan: Plan, out: Path, *, force: bool = False) -> dict:
    """Write the packed checkpoint of a `prepare_qat` model: codes of the latent float weights under
    the learned scales, i.e. the fake-quant forward exactly. Returns `save_packed`'s summary."""
    from whisper_kdq.quant.checkpoint import save_packed

    params = qat_params(model)
    names = dict(model.named_modules())
    # Tied copies (proj_out) are absent from the plan's names; only the stored weight is quantized.
    params = {n: p for n, p in params.items() if n.rsplit(".", 1)[0] in names}
    return save_packed(out, float_copy(model).cpu(), processor, plan, force=force, qparams=params)
