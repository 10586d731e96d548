"""train.click_loss=sampled_softmax: the click softmax over the client's own items and
num_negatives random others (with the log(others / pads) correction), any exchange."""

from __future__ import annotations

import json
import math

import numpy as np
import torch

from fedmtl.config import compose, validate
from fedmtl.data import federation_for
from fedmtl.model import build_model
from fedmtl.simulate import run
from fedmtl.tasks import choose_rows, click_candidates, losses
from fedmtl.train import local_train, train_config
from fedmtl.weighting import build_weighting

TINY = ["dataset.n_users=40", "dataset.n_items=400", "num_clients=4", "num_rounds=1", "local_epochs=1",
        "save_model=false", "checkpoint_every=0", "train.optimizer=sgd", "train.shared_lr=0.5"]


def client(*overrides, pid=0):
    cfg = validate(compose([*TINY, *overrides]))
    fed = federation_for(cfg)
    data = fed.partition_data(pid)
    model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, seed=0)
    return cfg, data, model


def trained(cfg, data, model, seed=0):
    before = model.encoder.item_emb.weight.detach().clone()
    local_train(model, data, cfg["tasks"], build_weighting(cfg["weighting"], cfg["tasks"]),
                train_config(cfg, 1), seed=seed)
    return (model.encoder.item_emb.weight.detach() - before).abs().sum(1) > 0


def test_only_own_items_and_num_negatives_pads_move():
    cfg, data, model = client("train.click_loss=sampled_softmax", "train.num_negatives=7", "tasks=[click]")
    moved = trained(cfg, data, model)
    own = set(data.train_i.tolist())
    pads = set(np.flatnonzero(moved.numpy()).tolist()) - own
    assert own and own <= set(np.flatnonzero(moved.numpy()).tolist())
    assert 0 < len(pads) <= 7
    # the full softmax, for contrast, moves every item row
    cfg, data, model = client("train.click_loss=softmax", "tasks=[click]")
    assert bool(trained(cfg, data, model).all())


def test_pads_are_redrawn_from_the_seed():
    cfg, data, model = client("train.click_loss=sampled_softmax", "train.num_negatives=7", "tasks=[click]")
    a = trained(cfg, data, model, seed=1)
    cfg, data, model = client("train.click_loss=sampled_softmax", "train.num_negatives=7", "tasks=[click]")
    b = trained(cfg, data, model, seed=2)
    assert not torch.equal(a, b)


def test_correction_makes_the_pad_logits_stand_for_every_unseen_item():
    touched = np.array([3, 5, 5, 9])
    rows = choose_rows(touched, 100, 10, np.random.default_rng(0))
    assert len(rows) == 13 and set([3, 5, 9]) <= set(rows.tolist())
    ids, offset = click_candidates(rows, touched, 100, "cpu")
    own = torch.isin(ids, torch.tensor([3, 5, 9]))
    assert bool((offset[own] == 0).all())
    torch.testing.assert_close(offset[~own], torch.full((10,), math.log(97 / 10)))


def test_a_client_with_every_item_trains_exactly_as_the_full_softmax():
    """No item left to pad with: the candidate set is every item, offsets 0."""
    _, data, model = client("tasks=[click]")
    n_items = int(data.train_i.max()) + 1
    everything = np.arange(model.n_items)
    cands = click_candidates(choose_rows(everything, model.n_items, 20, np.random.default_rng(0)),
                             everything, model.n_items, "cpu")
    assert n_items <= model.n_items and len(cands[0]) == model.n_items
    full = losses(model, data.train_u, data.train_i, data.train_r, ["click"], "softmax")["click"]
    sampled = losses(model, data.train_u, data.train_i, data.train_r, ["click"], "sampled_softmax",
                     candidates=cands)["click"]
    torch.testing.assert_close(sampled, full)


def test_it_learns_to_rank_in_a_federated_run(tmp_path):
    cfg = validate(compose(["dataset.n_users=60", "dataset.n_items=80", "num_clients=6", "num_rounds=4",
                            "local_epochs=2", "save_model=false", "checkpoint_every=0", "tasks=[click]",
                            "train.click_loss=sampled_softmax", "train.num_negatives=15", "train.lr=0.05",
                            "eval_every=1"]))
    run(cfg, tmp_path)
    rows = [json.loads(line) for line in open(tmp_path / "metrics.jsonl")]
    ndcg = [r["test"]["click.ndcg@10"] for r in rows if r.get("test")]
    assert len(ndcg) == 4 and ndcg[-1] > ndcg[0]
