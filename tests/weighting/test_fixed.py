"""Fixed: the gradient is that of sum_t w_t L_t with the configured weights."""

from __future__ import annotations

import pytest
import torch

from fedmtl.errors import ConfigError
from fedmtl.weighting import build_weighting



def test_gradient_is_that_of_the_weighted_sum(toy_batch, toy):
    tasks = ["rating", "click"]
    x, targets = toy_batch
    a, b = toy(tasks), toy(tasks)
    w = build_weighting({"name": "fixed", "weights": {"rating": 0.5, "click": 3.0}}, tasks)
    assert w.backward(a.losses(x, targets), list(a.shared.parameters())) == {"rating": 0.5, "click": 3.0}
    ls = b.losses(x, targets)
    (0.5 * ls["rating"] + 3.0 * ls["click"]).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_missing_weight_is_one_and_unknown_task_is_an_error():
    assert build_weighting({"name": "fixed", "weights": {"rating": 2.0}}, ["rating", "like"]).weights == \
        {"rating": 2.0, "like": 1.0}
    with pytest.raises(ConfigError, match="unknown task 'purchase'"):
        build_weighting({"name": "fixed", "weights": {"purchase": 1.0}}, ["rating"])
