"""Losses and layer matching."""

from __future__ import annotations

import torch

from whisper_kdq.distill.losses import cross_entropy, hidden_kd, layer_costs, logit_kd
from whisper_kdq.distill.matching import match, static_map


def test_logit_kd_is_zero_for_identical_logits_and_positive_otherwise():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 100, generator=gen)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, 3:] = False
    raw, ids = logits.topk(100, dim=-1)  # full support: exactly KL
    assert logit_kd(logits, ids, raw, mask, 2.0).abs() < 1e-5
    other = logits + torch.randn(2, 5, 100, generator=gen)
    kl = logit_kd(other, ids, raw, mask, 1.0)
    p, q = logits.log_softmax(-1), other.log_softmax(-1)
    expected = (p.exp() * (p - q)).sum(-1)[mask].mean()
    assert torch.allclose(kl, expected, atol=1e-5)
    # Padding positions do not count: changing them changes nothing.
    changed = other.clone()
    changed[1, 4] += 50
    assert torch.allclose(logit_kd(changed, ids, raw, mask, 1.0), kl)


def test_logit_kd_on_a_partial_support_is_zero_only_for_the_teacher_itself():
    # The cache keeps k << vocabulary tokens: a student equal to the teacher must still cost nothing,
    # at any temperature, and a student that moves mass into the tail must cost something.
    gen = torch.Generator().manual_seed(1)
    logits = 3 * torch.randn(2, 4, 500, generator=gen)
    mask = torch.ones(2, 4, dtype=torch.bool)
    raw, ids = logits.topk(8, dim=-1)
    logprobs = logits.log_softmax(-1).gather(-1, ids)
    for t in (1.0, 2.0, 4.0):
        assert logit_kd(logits, ids, raw, mask, t, logprobs).abs() < 1e-4
    tail = logits.clone()
    tail.scatter_(-1, ids, raw - 2.0)  # same shape within the support, less mass on it
    assert logit_kd(tail, ids, raw, mask, 2.0).abs() < 1e-4  # within-support part alone cannot see it
    assert logit_kd(tail, ids, raw, mask, 2.0, logprobs) > 0.05
    # On a full support the tail term vanishes and the loss is T^2 KL.
    full_raw, full_ids = logits.topk(500, dim=-1)
    other = logits + torch.randn(2, 4, 500, generator=gen)
    p, q = (logits / 2).log_softmax(-1), (other / 2).log_softmax(-1)
    expected = 4 * (p.exp() * (p - q)).sum(-1).mean()
    got = logit_kd(other, full_ids, full_raw, mask, 2.0, logits.log_softmax(-1).gather(-1, full_ids))
    assert torch.allclose(got, expected, atol=1e-3)


def test_cross_entropy_ignores_padding_labels():
    logits = torch.randn(1, 3, 10)
    labels = torch.tensor([[1, -100, 2]])
    ref = torch.nn.functional.cross_entropy(logits[0, [0, 2]], torch.tensor([1, 2]))
    assert torch.allclose(cross_entropy(logits, labels), ref)


def test_matching_strategies():
    assert static_map(2, 6) == [2, 5] and static_map(6, 12) == [1, 3, 5, 7, 9, 11] and static_map(4, 4) == [0, 1, 2, 3]
    cost = torch.tensor([[5.0, 1.0, 9.0], [9.0, 9.0, 2.0], [0.5, 9.0, 9.0]])
    assert match(cost, "dynamic") == [1, 2, 0]  # free choice may go backwards
    path = match(cost, "restrained-dynamic")
    assert path == sorted(path)  # monotone


def test_hidden_kd_finds_the_layer_a_student_copies():
    gen = torch.Generator().manual_seed(1)
    teacher = [torch.randn(2, 4, 8, generator=gen) for _ in range(6)]
    student = [teacher[1].clone(), teacher[4] + 0.01 * torch.randn(2, 4, 8, generator=gen)]
    mask = torch.ones(2, 4, dtype=torch.bool)
    loss, chosen = hidden_kd(student, teacher, mask, "restrained-dynamic")
    assert chosen == [1, 4] and loss < 1e-3
    costs = layer_costs(student, teacher, mask)
    assert costs.shape == (2, 6) and costs[0, 1] == 0
    only_first, _ = hidden_kd(student, teacher, mask, "static", only=[0])
    assert only_first == costs[0, 2]


def test_softmax_mse_is_the_papers_distance():
    gen = torch.Generator().manual_seed(2)
    teacher = [torch.randn(2, 3, 8, generator=gen) for _ in range(3)]
    student = [teacher[2].clone(), torch.randn(2, 3, 8, generator=gen)]
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[0, 2] = False
    t = 2.0
    cost = layer_costs(student, teacher, mask, "softmax-mse", t)
    assert cost[0, 2] == 0 and (cost[1] > 0).all()
    a, b = (student[1] / t).softmax(-1), (teacher[0] / t).softmax(-1)
    expected = t * t * ((a - b) ** 2).sum(-1)[mask].mean()
    assert torch.allclose(cost[1, 0], expected)
    loss, chosen = hidden_kd(student, teacher, mask, "dynamic", kind="softmax-mse", temperature=t)
    assert chosen[0] == 2 and torch.allclose(loss, (cost[0, 2] + cost[1].min()) / 2)
