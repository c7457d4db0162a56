"""Which teacher layer each student layer learns from: static, dynamic, restrained-dynamic.

All three take the loss matrix D[i, j] (student layer i against teacher layer j) of the current
batch and return the map and the loss it selects; the gradient flows only through chosen pairs.
"""

from __future__ import annotations

import torch

from whisper_kdq.errors import UserError

STRATEGIES = ("static", "dynamic", "restrained-dynamic")


def static_map(n_student: int, n_teacher: int) -> list[int]:
    """The paper's fixed map generalised: student layer i <- teacher layer (i+1)·L_T/L_S − 1 (floor)."""
    return [max(0, (i + 1) * n_teacher // n_student - 1) for i in range(n_student)]


def monotone_match(cost: torch.Tensor) -> list[int]:
    """Non-decreasing map i -> j minimising the summed cost, exactly (dynamic programming, O(L_S·L_T))."""
    cost = cost.detach().float().cpu()
    best = cost[0].clone()
    back = []
    for i in range(1, cost.shape[0]):
        prefix, arg = torch.cummin(best, dim=0)  # best total over teacher layers <= j
        back.append(arg)
        best = prefix + cost[i]
    j = int(best.argmin())
    path = [j]
    for arg in reversed(back):
        j = int(arg[j])
        path.append(j)
    return path[::-1]


def match(cost: torch.Tensor, strategy: str, fixed: list[int] | None = None) -> list[int]:
    """The teacher layer of every student layer under `strategy` (`fixed` overrides the static map)."""
    n_s, n_t = cost.shape
    if strategy == "static":
        return fixed or static_map(n_s, n_t)
    if strategy == "dynamic":
        return [int(j) for j in cost.detach().argmin(dim=1)]
    if strategy == "restrained-dynamic":
        return monotone_match(cost)
    raise UserError(f"unknown matching strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
