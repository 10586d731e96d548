"""train.optimizer: the local optimiser of the shared parameters (FedOpt's client step),
and the guard that stops a diverged run."""

from __future__ import annotations

import json
import math
import pickle
from dataclasses import replace

import numpy as np
import pytest
import torch

from fedmtl.config import compose, validate
from fedmtl.data import federation_for
from fedmtl.errors import ConfigError, DivergedError
from fedmtl.model import build_model, shared_names
from fedmtl.simulate import run
from fedmtl.tasks import losses
from fedmtl.train import local_train, train_config
from fedmtl.weighting import build_weighting

TINY = ["dataset.n_users=40", "dataset.n_items=30", "num_clients=4", "num_rounds=3", "local_epochs=1",
        "save_model=false", "checkpoint_every=0"]


def one_step(*overrides):
    return _step(*overrides)[:4]


def _step(*overrides):
    cfg = validate(compose([*TINY, "train.batch_size=100000", "train.l2=0", *overrides]))
    fed = federation_for(cfg)
    data = fed.partition_data(0)
    model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, seed=0)
    shared = shared_names(model, "encoder")
    model.zero_grad()
    ls = losses(model, data.train_u, data.train_i, data.train_r, cfg["tasks"])
    sum(ls.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    local_train(model, data, cfg["tasks"], build_weighting(cfg["weighting"], cfg["tasks"]),
                replace(train_config(cfg, 1)), seed=0, shared=shared)
    delta = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    return cfg, shared, grads, delta, before


def test_sgd_moves_shared_parameters_by_lr_times_gradient_and_personal_ones_by_adam():
    cfg, shared, grads, delta = one_step("train.optimizer=sgd", "train.shared_lr=0.3", "train.lr=0.01")
    for n in shared:
        if n in grads:
            torch.testing.assert_close(delta[n], -0.3 * grads[n], rtol=1e-4, atol=1e-7)
    # Adam's first step moves each personal coordinate with a gradient by about lr (sign step)
    user = delta["personal.user_emb.weight"][grads["personal.user_emb.weight"].abs() > 1e-6]
    assert user.numel() > 0
    torch.testing.assert_close(user.abs(), torch.full_like(user, 0.01), rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_personal_decay_pulls_the_personal_parameters_only(optimizer):
    """train.personal_decay adds decay * p to the personal parameters' gradients (Adam's coupled
    decay): so large here that Adam's first step moves every personal coordinate by lr toward
    0; the shared parameters move exactly as without it."""
    ov = [f"train.optimizer={optimizer}", "train.shared_lr=0.3", "train.lr=0.01"]
    _, shared, _, plain, _ = _step(*ov)
    _, _, _, delta, before = _step(*ov, "train.personal_decay=1e6")
    for n in shared:
        torch.testing.assert_close(delta[n], plain[n], rtol=0, atol=0)
    for n in ("personal.user_emb.weight", "personal.heads.rating.proj"):
        p = before[n][before[n].abs() > 1e-3]
        assert p.numel() > 0
        torch.testing.assert_close(delta[n][before[n].abs() > 1e-3], -0.01 * p.sign(), rtol=1e-3, atol=1e-6)


def test_adam_is_the_default_and_shared_lr_sets_its_rate():
    _, shared, grads, delta = one_step("train.shared_lr=0.002", "train.lr=0.01")
    moved = torch.cat([delta[n][grads[n].abs() > 1e-6] for n in shared if n in grads])
    torch.testing.assert_close(moved.abs(), torch.full_like(moved, 0.002), rtol=1e-2, atol=1e-5)


@pytest.mark.parametrize("bad, key", [("train.optimizer=lbfgs", "train.optimizer"),
                                      ("train.shared_lr=0", "train.shared_lr"),
                                      ("train.personal_decay=-0.1", "train.personal_decay")])
def test_bad_optimizer_options_are_one_line_errors(bad, key):
    with pytest.raises(ConfigError, match=key):
        validate(compose([bad]))


def test_a_diverging_run_stops_with_one_line_and_keeps_its_finished_rounds(tmp_path):
    """shared_lr=100 under SGD: round 1 trains and evaluates, round 2's updates blow up.
    The run stops at round 2 with one line; round 1's metrics.jsonl row and its checkpoint
    (the same row in its history, finite shared arrays) are what it leaves."""
    cfg = compose([*TINY, "train.optimizer=sgd", "train.shared_lr=100", "checkpoint_every=1"])
    with pytest.raises(DivergedError, match=r"round 2: (the aggregated encoder\.\S+|every client's reply) holds "
                                            r"\d* ?NaN/inf.*diverged") as e:  # noqa: E501
        run(cfg, tmp_path)
    assert "\n" not in str(e.value)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1]  # the finished round, and nothing of the diverged one
    assert rows[0]["answered"] == 4 and rows[0]["failed"] == 0
    train, test = rows[0]["train"], rows[0]["test"]
    assert {f"loss.{t}" for t in cfg["tasks"]} <= train.keys()
    assert {"rating.rmse", "click.ndcg@10", "like.auc"} <= test.keys() and test["clients"] == 4
    assert all(math.isfinite(v) for v in [*train.values(), *test.values()])
    latest = json.loads((tmp_path / "checkpoint" / "LATEST").read_text())
    assert latest == {"round": 1, "dir": "round_0001"}
    server = pickle.loads((tmp_path / "checkpoint" / "round_0001" / "server.pkl").read_bytes())
    assert server["round"] == 1 and server["history"] == rows
    assert server["arrays"] and all(np.isfinite(a).all() for a in server["arrays"].values())
