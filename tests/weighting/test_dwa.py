"""DWA (Liu et al. 2019): weights are T * softmax of the last two epochs' loss ratios
over a temperature; the loss history spans rounds through the client's state."""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedmtl.weighting import build_weighting



def test_weights_are_one_until_two_epochs_are_seen():
    w = build_weighting({"name": "dwa"}, ["rating", "like"])
    assert w.task_weights().tolist() == [1.0, 1.0]
    w.end_epoch({"rating": 1.0, "like": 2.0})
    assert w.task_weights().tolist() == [1.0, 1.0]


def test_weights_follow_loss_ratios():
    tasks = ["rating", "click", "like"]
    w = build_weighting({"name": "dwa", "temperature": 2.0}, tasks)
    w.end_epoch({"rating": 1.0, "click": 4.0, "like": 0.8})
    w.end_epoch({"rating": 1.0, "click": 2.0, "like": 0.6})  # ratios 1.0, 0.5, 0.75
    ratios = [1.0, 0.5, 0.75]
    z = sum(math.exp(r / 2.0) for r in ratios)
    expected = [3 * math.exp(r / 2.0) / z for r in ratios]
    assert w.task_weights().tolist() == pytest.approx(expected)
    # the task whose loss fell least gets the most weight; the weights sum to T
    assert w.task_weights().argmax() == 0 and w.task_weights().argmin() == 1
    assert float(w.task_weights().sum()) == pytest.approx(3.0)
    # only the last two epochs count
    w.end_epoch({"rating": 0.5, "click": 2.0, "like": 0.6})  # ratios 0.5, 1.0, 1.0
    assert w.task_weights().argmin() == 0


def test_temperature_flattens_the_weights():
    def weights(temperature):
        w = build_weighting({"name": "dwa", "temperature": temperature}, ["rating", "like"])
        w.end_epoch({"rating": 1.0, "like": 1.0})
        w.end_epoch({"rating": 1.0, "like": 0.5})
        return w.task_weights()
    assert float(weights(100.0)[0] - weights(100.0)[1]) < float(weights(0.5)[0] - weights(0.5)[1])


def test_backward_uses_the_weights(toy_batch, toy):
    tasks = ["rating", "like"]
    x, targets = toy_batch
    a, b = toy(tasks), toy(tasks)
    w = build_weighting({"name": "dwa"}, tasks)
    w.end_epoch({"rating": 2.0, "like": 2.0})
    w.end_epoch({"rating": 1.0, "like": 2.0})
    used = w.backward(a.losses(x, targets), list(a.shared.parameters()))
    assert used == dict(zip(tasks, w.task_weights().tolist()))
    ls = b.losses(x, targets)
    (used["rating"] * ls["rating"] + used["like"] * ls["like"]).backward()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad)


def test_history_survives_a_state_round_trip():
    w = build_weighting({"name": "dwa"}, ["rating", "like"])
    w.end_epoch({"rating": 1.0, "like": 1.0})
    w.end_epoch({"rating": 1.0, "like": 0.5})
    restored = build_weighting({"name": "dwa"}, ["rating", "like"])
    restored.load_state_dict(w.state_dict())
    torch.testing.assert_close(restored.task_weights(), w.task_weights())


def test_history_spans_rounds_in_a_federated_run(tmp_path):
    """One local epoch per round: weights can leave 1 only in round 3, from the
    losses of rounds 1 and 2 kept in each client's state."""
    from fedmtl.config import compose
    from fedmtl.simulate import run

    cfg = compose(["weighting=dwa", "dataset.n_users=40", "dataset.n_items=30", "num_clients=4",
                   "num_rounds=3", "local_epochs=1", "eval_every=3", "save_model=false"])
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    weights = [[r["train"][f"weight.{t}"] for t in cfg["tasks"]] for r in rows]
    assert weights[0] == weights[1] == [1.0, 1.0, 1.0]
    assert max(abs(w - 1.0) for w in weights[2]) > 1e-4
    assert sum(weights[2]) == pytest.approx(3.0)
