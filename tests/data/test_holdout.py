"""New users and new items (transfer.new_users / new_items) never reach training: no client
holds a new user, no train row names a new user or a new item, and the exported split says so."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedmtl.config import compose
from fedmtl.data import build_federation, federation_for
from fedmtl.model import build_model, saved as saved_model
from fedmtl.simulate import run
from fedmtl.tasks import losses

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu"]
HOLD = ["transfer.new_users=0.2", "transfer.new_items=0.2", "transfer.k=[0,1]", "transfer.epochs=2"]


@pytest.fixture(scope="module")
def held(tmp_path_factory):
    cfg = compose(TINY + HOLD)
    out = tmp_path_factory.mktemp("held")
    run(cfg, out)
    return cfg, federation_for(cfg), out


def test_the_fractions_are_held_out_and_seeded(held):
    cfg, fed, _ = held
    assert len(fed.holdout.users) == 12 and len(fed.holdout.items) == 8
    again = build_federation(cfg).holdout
    assert np.array_equal(again.users, fed.holdout.users) and np.array_equal(again.items, fed.holdout.items)
    other = federation_for(compose(TINY + HOLD + ["transfer.seed=5"])).holdout
    assert not np.array_equal(other.users, fed.holdout.users)


def test_no_client_and_no_train_row_ever_sees_a_new_user_or_item(held):
    _, fed, _ = held
    new_u, new_i = set(fed.holdout.users.tolist()), set(fed.holdout.items.tolist())
    assert not new_u & set(fed.split.train["user"]) and not new_u & set(fed.split.test["user"])
    assert not new_i & set(fed.split.train["item"])
    for pid in range(len(fed.clients)):
        data = fed.partition_data(pid)
        assert not new_u & set(data.users.tolist())
        assert not new_i & set(data.train_i.tolist())
    # The new users' whole log is kept aside, in timestamp order per user.
    log_ = fed.holdout.user_log
    full = fed.dataset.interactions
    assert len(log_) == int(full["user"].isin(new_u).sum())
    assert all(g["ts"].is_monotonic_increasing for _, g in log_.groupby("user"))
    # New items are still ranked at test time: their train rows moved to test.
    assert new_i & set(fed.split.test["item"])


def test_the_exported_split_holds_no_new_user_or_item_in_train(held):
    _, fed, out = held
    cols = ["user", "item", "rating", "ts"]
    train = pd.read_csv(out / "split" / "train.tsv", sep="\t", names=cols)
    test = pd.read_csv(out / "split" / "test.tsv", sep="\t", names=cols)
    new_users = pd.read_csv(out / "split" / "new_users.tsv", sep="\t", names=cols)
    new_items = set(int(x) for x in (out / "split" / "new_items.txt").read_text().split())
    raw_new_u = set(fed.dataset.raw_user_ids[fed.holdout.users].tolist())
    assert set(new_users["user"]) == raw_new_u
    assert not raw_new_u & set(train["user"]) and not raw_new_u & set(test["user"])
    assert not new_items & set(train["item"]) and new_items & set(test["item"])


def test_what_the_server_holds_knows_nothing_of_new_items(held):
    _, fed, out = held
    emb = saved_model.load(out).arrays["encoder.item_emb.weight"]
    new = fed.holdout.items
    assert np.all(emb[new] == 0) and np.all(np.abs(emb[np.setdiff1d(np.arange(len(emb)), new)]).sum(1) > 0)


def test_hidden_items_are_never_click_negatives():
    cfg = compose(TINY)
    fed = federation_for(cfg)
    model = build_model(cfg["model"], ["click"], 2, np.zeros((2, 2), np.int64), fed.meta, 0)
    hidden = torch.zeros(40, dtype=torch.bool)
    hidden[[3, 7]] = True
    u, i, r = torch.tensor([0, 1]), torch.tensor([1, 2]), torch.tensor([4.0, 2.0])
    for mask, expect_zero in ((None, False), (hidden, True)):
        model.zero_grad()
        model.encoder.hidden_items = mask
        losses(model, u, i, r, ["click"])["click"].backward()
        grad = model.encoder.item_emb.weight.grad[[3, 7]]
        assert bool((grad == 0).all()) == expect_zero
    model.encoder.hidden_items = None
