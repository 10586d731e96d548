"""GradNorm (Chen et al. 2018): learned weights move the tasks' weighted gradient
norms on the shared parameters toward balance (alpha favours slower tasks)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedmtl.weighting import build_weighting


def _quadratic_tasks(scale_a, scale_b):
    """Two losses on one shared vector theta: L_a = scale_a ||theta - a||^2, L_b likewise,
    with ||theta - a|| = ||theta - b||, so their gradient norms differ by scale_a / scale_b."""
    theta = nn.Parameter(torch.zeros(2))
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])

    def losses():
        return {"rating": scale_a * (theta - a).pow(2).sum(), "like": scale_b * (theta - b).pow(2).sum()}
    return theta, losses


def _weighted_norms(weights, theta, losses):
    out = {}
    for t, loss in losses().items():
        (g,) = torch.autograd.grad(loss, theta)
        out[t] = weights[t] * float(g.norm())
    return out


def test_weights_move_toward_balanced_gradient_norms():
    theta, losses = _quadratic_tasks(10.0, 1.0)  # rating's gradient is 10x larger
    gn = build_weighting({"name": "gradnorm", "alpha": 1.5}, ["rating", "like"])
    opt = torch.optim.Adam(gn.parameters(), lr=0.05)  # theta stays put: equal training rates
    first = None
    for _ in range(200):
        opt.zero_grad()
        theta.grad = None
        weights = gn.backward(losses(), [theta])
        first = first or weights
        opt.step()
    assert first == {"rating": 1.0, "like": 1.0}
    assert weights["rating"] < 0.3 and weights["like"] > 1.7
    assert sum(weights.values()) == pytest.approx(2.0)
    norms = _weighted_norms(weights, theta, losses)
    assert norms["rating"] / norms["like"] == pytest.approx(1.0, abs=0.2)  # from 10


def test_slower_training_task_gains_weight():
    theta, losses = _quadratic_tasks(1.0, 1.0)  # equal gradient norms
    gn = build_weighting({"name": "gradnorm", "alpha": 1.5}, ["rating", "like"])
    gn.backward(losses(), [theta])  # records L(0)
    gn.initial_losses[1] *= 4.0  # as if like's loss had fallen to a quarter: rating trains slower
    opt = torch.optim.Adam(gn.parameters(), lr=0.05)
    for _ in range(50):
        opt.zero_grad()
        weights = gn.backward(losses(), [theta])
        opt.step()
    assert weights["rating"] > 1.2 > 0.8 > weights["like"]


def test_model_gets_the_weighted_sum_of_task_gradients():
    theta, losses = _quadratic_tasks(3.0, 1.0)
    head = nn.Parameter(torch.tensor(2.0))  # a personal parameter in both losses
    gn = build_weighting({"name": "gradnorm"}, ["rating", "like"])
    with torch.no_grad():
        gn.logits.copy_(torch.tensor([0.5, -0.5]))
    w = gn.task_weights().detach()

    def with_head():
        return {t: head * v for t, v in losses().items()}
    used = gn.backward(with_head(), [theta])
    assert list(used.values()) == pytest.approx(w.tolist())
    ls = with_head()
    gt, gh = torch.autograd.grad(w[0] * ls["rating"] + w[1] * ls["like"], [theta, head])
    torch.testing.assert_close(theta.grad, gt)
    torch.testing.assert_close(head.grad, gh)
    assert gn.logits.grad is not None


def test_initial_losses_are_kept_state():
    theta, losses = _quadratic_tasks(2.0, 1.0)
    gn = build_weighting({"name": "gradnorm"}, ["rating", "like"])
    gn.backward(losses(), [theta])
    assert gn.initial_losses.tolist() == pytest.approx([2.0, 1.0])
    restored = build_weighting({"name": "gradnorm"}, ["rating", "like"])
    restored.load_state_dict(gn.state_dict())
    assert sorted(gn.state_dict()) == ["initial_losses", "logits"]
    torch.testing.assert_close(restored.initial_losses, gn.initial_losses)
