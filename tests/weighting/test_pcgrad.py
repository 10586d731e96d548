"""PCGrad (Yu et al. 2020): on the shared parameters, each task gradient loses its
component along any other task gradient it conflicts with."""

from __future__ import annotations

import torch
from torch import nn

from fedmtl.weighting import build_weighting
from fedmtl.weighting.pcgrad import project_conflicts


def test_removes_the_conflicting_component_of_two_opposing_gradients():
    g = torch.tensor([[1.0, 0.0], [-1.0, 1.0]])  # g1 . g2 = -1 < 0
    p = project_conflicts(g)
    torch.testing.assert_close(p[0], torch.tensor([0.5, 0.5]))  # g1 - (g1.g2/|g2|^2) g2
    torch.testing.assert_close(p[1], torch.tensor([0.0, 1.0]))  # g2 - (g2.g1/|g1|^2) g1
    assert float(p[0] @ g[1]) == 0.0 and float(p[1] @ g[0]) == 0.0


def test_leaves_agreeing_gradients_alone():
    g = torch.tensor([[1.0, 0.0, 1.0], [0.5, 2.0, 0.0], [0.0, 1.0, 1.0]])
    torch.testing.assert_close(project_conflicts(g), g)


def test_backward_puts_the_projected_sum_on_shared_and_the_plain_sum_on_personal():
    theta = nn.Parameter(torch.zeros(2))          # shared
    head = nn.Parameter(torch.tensor(1.0))        # personal, in both losses
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    losses = {"rating": head * (theta @ g1) + head, "like": head * (theta @ g2) + 2 * head}
    weights = build_weighting({"name": "pcgrad"}, ["rating", "like"]).backward(losses, [theta])
    assert weights == {"rating": 1.0, "like": 1.0}
    torch.testing.assert_close(theta.grad, torch.tensor([0.5, 1.5]))  # not g1 + g2 = [0, 1]
    torch.testing.assert_close(head.grad, torch.tensor(3.0))


def test_adds_to_gradients_already_there():
    theta = nn.Parameter(torch.zeros(2))
    theta.grad = torch.tensor([10.0, 10.0])
    losses = {"rating": theta @ torch.tensor([1.0, 0.0]), "like": theta @ torch.tensor([-1.0, 1.0])}
    build_weighting({"name": "pcgrad"}, ["rating", "like"]).backward(losses, [theta])
    torch.testing.assert_close(theta.grad, torch.tensor([10.5, 11.5]))
