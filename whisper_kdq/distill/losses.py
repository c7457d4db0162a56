"""Distillation losses, each a mean over reference tokens so that weights mean the same at any batch size.

- `cross_entropy`: the student against the (reference or pseudo-label) transcript;
- `logit_kd`: KL(teacher ‖ student) on the teacher's top-k tokens plus one bucket for the rest of the
  vocabulary. The cache keeps only k logits per position, so the teacher's distribution at T ≠ 1 is
  known only within those k: the loss is T² · KL within the support (both renormalised on it, at T)
  plus the binary KL of the mass on the support vs the tail (at T = 1, where it is known exactly).
  Both are zero when the student equals the teacher. (Comparing the teacher renormalised on k tokens
  with the student normalised on the whole vocabulary, as before 2026-11-30, is not: at T = 2 the
  teacher's tail over 51,865 tokens is most of the mass, so that loss mostly pushed the tail down.)
- `hidden_kd`: normalised MSE between student block outputs and their matched teacher blocks
  (or the paper's softmax-MSE: both passed through a softmax over features at temperature T),
  matched per batch by `distill.matching` (static, dynamic, restrained-dynamic).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from whisper_kdq.distill.matching import STRATEGIES, match


HIDDEN_LOSSES = ("mse", "softmax-mse")


@dataclass
class LossWeights:
    ce: float = 1.0
    kd: float = 1.0  # logits KL
    hidden: float = 0.0  # hidden-state distillation (decoder blocks; encoder blocks when it trains)
    temperature: float = 2.0
    matching: str = "restrained-dynamic"
    hidden_loss: str = "mse"  # or "softmax-mse" (the paper's: T² · Σ_features (softmax(h_s/T) − softmax(h_t/T))²)

    def validate(self) -> None:
        from whisper_kdq.errors import UserError

        if self.matching not in STRATEGIES:
            raise UserError(f"unknown matching strategy {self.matching!r}: use one of {', '.join(STRATEGIES)}")
        if self.hidden_loss not in HIDDEN_LOSSES:
            raise UserError(f"unknown hidden loss {self.hidden_loss!r}: use one of {', '.join(HIDDEN_LOSSES)}")
        if self.temperature <= 0 or min(self.ce, self.kd, self.hidden) < 0:
            raise UserError("loss weights must be >= 0 and the temperature > 0")
        if self.ce == self.kd == self.hidden == 0:
            raise UserError("all loss weights are zero: nothing to train on")

    @property
    def uses_teacher(self) -> bool:
        return self.kd > 0 or self.hidden > 0


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)


def logit_kd(logits: torch.Tensor, topk_ids: torch.Tensor, topk_raw: torch.Tensor, mask: torch.Tensor,
             temperature: float, topk_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """T² · KL within the teacher's top-k support at temperature T (+ the support/tail binary KL at T = 1 when
    `topk_logprobs`, the teacher's full-vocabulary log-probs of those tokens, are given); mean over masked positions."""
    t = temperature
    z = logits.float()
    z_sup = z.gather(-1, topk_ids)
    log_q = F.log_softmax(z_sup / t, dim=-1)  # student, renormalised on the teacher's support
    log_p = F.log_softmax(topk_raw.float() / t, dim=-1)  # teacher, the same
    kl = t * t * (log_p.exp() * (log_p - log_q)).sum(-1)
    if topk_logprobs is not None:
        log_p_in = torch.logsumexp(topk_logprobs.float(), dim=-1).clamp(max=-1e-7)
        log_q_in = (torch.logsumexp(z_sup, dim=-1) - torch.logsumexp(z, dim=-1)).clamp(max=-1e-7)
        log_p_out, log_q_out = _log1mexp(log_p_in), _log1mexp(log_q_in)
        kl = kl + log_p_in.exp() * (log_p_in - log_q_in) + log_p_out.exp() * (log_p_out - log_q_out)
    return kl[mask].mean()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0, stable at both ends."""
    return torch.where(x > -0.693, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def layer_costs(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor | None,
                kind: str = "mse", temperature: float = 1.0) -> torch.Tensor:
    """D[i, j] = ‖h_s,i − h_t,j‖² / ‖h_t,j‖² over (masked) positions: scale-free across layers.

    `kind="softmax-mse"`: D[i, j] = T² · mean over positions of Σ_features (softmax(h_s,i/T) − softmax(h_t,j/T))²."""
    if kind == "softmax-mse":
        return _softmax_costs(student, teacher, mask, temperature)
    costs = []
    w = None if mask is None else mask.unsqueeze(-1).to(student[0].dtype)
    for hs in student:
        row = []
        for ht in teacher:
            err, ref = (hs - ht) ** 2, ht ** 2
            if w is not None:
                err, ref = err * w, ref * w
            row.append(err.sum() / ref.sum().clamp_min(1e-12))
        costs.append(torch.stack(row))
    return torch.stack(costs)


def _softmax_costs(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor | None,
                   t: float) -> torch.Tensor:
    ps = [F.softmax(h.float() / t, dim=-1) for h in student]
    pt = [F.softmax(h.float() / t, dim=-1) for h in teacher]
    keep = None if mask is None else mask.to(ps[0].dtype)
    rows = []
    for a in ps:
        row = []
        for b in pt:
            per_pos = ((a - b) ** 2).sum(-1)
            row.append(per_pos.mean() if keep is None else (per_pos * keep).sum() / keep.sum().clamp_min(1))
        rows.append(torch.stack(row))
    return t * t * torch.stack(rows)


def hidden_kd(student: list[torch.Tensor], teacher: list[torch.Tensor], mask: torch.Tensor | None,
              strategy: str, fixed: list[int] | None = None, only: list[int] | None = None,
              kind: str = "mse", temperature: float = 1.0) -> tuple[torch.Tensor, list[int]]:
    """Mean over the distilled student blocks of their matched cost; returns (loss, map).

    `only` restricts the loss to some student blocks (the guided selection's choice)."""
    cost = layer_costs(student, teacher, mask, kind, temperature)
    chosen = match(cost, strategy, fixed)
    rows = only if only is not None else range(len(student))
    terms = [cost[i, chosen[i]] for i in rows]
    loss = torch.stack(terms).mean() if terms else cost.sum() * 0
    return loss, chosen
