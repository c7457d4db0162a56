"""GPTQ (Frantar et al., ICLR 2023): round a linear layer's weights one input column at a time and move
each rounding error onto the columns not yet rounded, where the layer's inputs can absorb it.

For y = x W^T the output error of a perturbation D is tr(D H D^T) with H = E[x x^T] (the input Gram
matrix, measured on calibration audio). Rounding column j leaves an error that the not-yet-rounded
columns compensate through the inverse of H (the Optimal Brain Surgeon update); a Cholesky factor of
H^-1 gives every update at once for a block of columns.

The scale and offset of every group are chosen first, from the float weights (the clip search,
weighted by the diagonal of H): "static groups". GPTQ then only picks different codes on that fixed
grid, so its output is an ordinary quantized tensor — same packing, same file format, same loader.
Columns are visited in order of decreasing input energy (`act_order`), which static groups allow.
"""

from __future__ import annotations

import torch

from whisper_kdq.quant.schemes import QTensor, QuantSpec, choose_params, quantize, quantizer_for

__all__ = ["gptq_for_plan", "gptq_quantize", "gptq_targets", "gptq_tensors", "linear_weights", "output_error"]


def _per_element(values: torch.Tensor, shape: tuple[int, int], spec: QuantSpec) -> torch.Tensor:
    """Expand one value per group to the [rows, cols] weight it covers."""
    rows, cols = shape
    if spec.granularity == "per-tensor":
        return values.reshape(1, 1).expand(rows, cols)
    if spec.granularity == "per-channel":
        return values.reshape(rows, 1).expand(rows, cols)
    per_row = -(-cols // spec.group_size)
    return values.reshape(rows, per_row).repeat_interleave(spec.group_size, dim=1)[:, :cols]


def gptq_quantize(w: torch.Tensor, spec: QuantSpec, hessian: torch.Tensor, *, clip: str = "mse",
                  damp: float = 0.01, block: int = 128, act_order: bool = True) -> QTensor:
    """Quantize the 2-D weight `w` [out, in] of a linear layer whose inputs have Gram matrix `hessian`
    [in, in]. `damp` (a fraction of the mean diagonal) keeps H invertible when calibration is short."""
    if w.dim() != 2 or hessian.shape != (w.shape[1], w.shape[1]):
        raise ValueError(f"GPTQ needs a 2-D weight and its [in, in] Gram matrix; got {tuple(w.shape)} and "
                         f"{tuple(hessian.shape)}")
    W = w.detach().float().cpu().clone()
    H = hessian.detach().double().cpu().clone()
    rows, cols = W.shape
    dead = torch.diag(H) == 0  # inputs that never fired: their weights cannot matter, any code will do
    H[dead, dead] = 1.0
    scale, offset = choose_params(W, spec, clip, torch.diag(H).float().clamp_min(0))
    S = _per_element(scale, (rows, cols), spec)
    O = None if offset is None else _per_element(offset, (rows, cols), spec)
    quantizer = quantizer_for(spec)

    order = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(cols)
    W, H, S = W[:, order], H[order][:, order], S[:, order]
    O = None if O is None else O[:, order]
    H += damp * torch.diag(H).mean() * torch.eye(cols, dtype=H.dtype)
    Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True).float()

    Q = torch.zeros_like(W)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col, j = W1[:, i], i1 + i
            off = None if O is None else O[:, j]
            codes = quantizer.encode(col[:, None], S[:, j], off)
            q = quantizer.decode(codes, S[:, j], off)[:, 0]
            Q[:, j] = q
            err = (col - q) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]

    Q = Q[:, torch.argsort(order)]
    # Every entry of Q lies on its group's grid: re-encoding with the same scales gives exactly its codes.
    return quantize(Q, spec, scale=scale, offset=offset)


def output_error(w: torch.Tensor, w_hat: torch.Tensor, hessian: torch.Tensor) -> float:
    """tr((W - W_hat) H (W - W_hat)^T): the layer's output squared error summed over its outputs."""
    d = (w.float() - w_hat.float()).double()
    return float(torch.einsum("ij,jk,ik->", d, hessian.double(), d))


def linear_weights(model: torch.nn.Module) -> set[str]:
    """The weights GPTQ can take: those of linear layers, except the output projection (tied to the
    token embedding, whose rows are also looked up one by one: its error is per row, not per output)."""
    return {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n != "proj_out"}


def gptq_targets(model: torch.nn.Module, specs: dict[str, QuantSpec | None]) -> set[str]:
    """The planned weights GPTQ can take."""
    linear = linear_weights(model)
    return {n for n, s in specs.items() if s is not None and n in linear}


def gptq_tensors(model: torch.nn.Module, specs: dict[str, QuantSpec | None], hessians: dict[str, torch.Tensor], *,
                 clip: str = "mse", damp: float = 0.01, act_order: bool = True,
                 progress=None) -> dict[str, QTensor]:
    """GPTQ every planned weight that has a calibration Hessian; `progress(name)` is called after each."""
    state = dict(model.named_parameters())
    out = {}
    for name in sorted(hessians):
        out[name] = gptq_quantize(state[name], specs[name], hessians[name], clip=clip, damp=damp, act_order=act_order)
        if progress is not None:
            progress(name)
    return out


def gptq_for_plan(model: torch.nn.Module, processor, plan, dataset, clips: int = 32,
                  progress=None) -> dict[str, QTensor]:
    """GPTQ for every linear weight `plan` quantizes, calibrated on `clips` clips of `dataset` (spread over
    its languages): what `quantize --method gptq` writes and `distill --qat-init gptq` starts from."""
    from whisper_kdq.quant.calibrate import input_hessians

    state = model.state_dict()
    splits = plan.splits(state)  # a row-split weight is quantized per part by the clip search, not GPTQ
    specs = {n: s for n, s in plan.resolve(state).items() if n not in splits}
    hessians = input_hessians(model, processor, dataset, gptq_targets(model, specs), clips)
    return gptq_tensors(model, specs, hessians, clip="max" if plan.clip == "max" else "mse", progress=progress)
