"""Uncertainty weighting (Kendall et al. 2018): learned log-variances give a noisier
task a smaller weight; they are personal state that survives a round trip."""

from __future__ import annotations

import pytest
import torch

from fedmtl.weighting import build_weighting



def test_noisier_task_gets_the_smaller_weight(toy):
    tasks = ["rating", "like"]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 4, generator=g)
    signal = x @ torch.tensor([1.0, -1.0, 0.5, 0.0])
    targets = {"rating": signal + 0.1 * torch.randn(256, generator=g),   # clean
               "like": signal + 2.0 * torch.randn(256, generator=g)}     # noisy
    model = toy(tasks)
    weighting = build_weighting({"name": "uncertainty"}, tasks)
    opt = torch.optim.Adam(list(model.parameters()) + list(weighting.parameters()), lr=0.05)
    for _ in range(300):
        opt.zero_grad()
        losses = model.losses(x, targets)
        weights = weighting.backward(losses, list(model.shared.parameters()))
        opt.step()
    assert weights["like"] < 0.5 < 2.0 < weights["rating"]
    # At the optimum exp(-s_t) = 1 / L_t: the weight is the inverse of the task's loss.
    for t in tasks:
        assert weights[t] == pytest.approx(1.0 / float(losses[t].detach()), rel=0.3)


def test_starts_at_weight_one_and_the_gradient_is_that_of_its_objective(toy_batch, toy):
    tasks = ["rating", "click"]
    x, targets = toy_batch
    a, b = toy(tasks), toy(tasks)
    w = build_weighting({"name": "uncertainty", "init_log_var": 0.7}, tasks)
    assert w.backward(a.losses(x, targets), list(a.shared.parameters())) == \
        {t: pytest.approx(float(torch.exp(torch.tensor(-0.7)))) for t in tasks}
    s = torch.tensor([0.7, 0.7], requires_grad=True)
    ls = b.losses(x, targets)
    sum(torch.exp(-s[k]) * ls[t] + s[k] for k, t in enumerate(tasks)).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)
    torch.testing.assert_close(w.log_vars.grad, s.grad)
    assert build_weighting({"name": "uncertainty"}, tasks).task_weights().tolist() == [1.0, 1.0]


def test_log_variances_are_the_state_a_client_keeps():
    w = build_weighting({"name": "uncertainty"}, ["rating", "like"])
    with torch.no_grad():
        w.log_vars.copy_(torch.tensor([0.3, -1.0]))
    restored = build_weighting({"name": "uncertainty"}, ["rating", "like"])
    restored.load_state_dict(w.state_dict())
    assert list(w.state_dict()) == ["log_vars"]
    torch.testing.assert_close(restored.task_weights(), w.task_weights())
