"""model.history=true: SVD++/FISM's implicit term. A user is also the mean of shared item
factors over its own training items; a training pair leaves its own item out."""

from __future__ import annotations

import pytest
import torch

from fedmtl.config import compose, validate
from fedmtl.data import federation_for
from fedmtl.model import build_model


def setup(history=True):
    cfg = validate(compose(["dataset.n_users=40", "dataset.n_items=30", "num_clients=2",
                            f"model.history={str(history).lower()}"]))
    fed = federation_for(cfg)
    data = fed.partition_data(0)
    model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, seed=0)
    return cfg, data, model


def test_the_user_depends_on_its_training_items_only():
    _, data, model = setup()
    model.attach(data)
    users = torch.arange(len(data.users))
    base = model.user_reps(users)[0].detach()
    with torch.no_grad():  # move the factor of an item some user trained on, and one nobody did
        seen = int(data.train_i[0])
        unseen = sorted(set(range(model.n_items)) - set(data.train_i.tolist()))
        model.encoder.item_hist.weight[seen] += 1.0
        moved = model.user_reps(users)[0]
        assert not torch.allclose(moved[int(data.train_u[0])], base[int(data.train_u[0])])
        if unseen:
            model.encoder.item_hist.weight[unseen[0]] += 1.0
            torch.testing.assert_close(model.user_reps(users)[0], moved)


def test_a_pair_leaves_its_own_item_out():
    _, data, model = setup()
    model.attach(data)
    u, i = data.train_u[:1], data.train_i[:1]
    rep = model.user_reps(u, leave_out=i)[0].sum()
    (grad,) = torch.autograd.grad(rep, model.encoder.item_hist.weight)
    assert grad[int(i)].abs().sum() == 0  # its own item's factor plays no part
    others = data.train_i[data.train_u == u[0]]
    others = others[others != i[0]]
    assert grad[others].abs().sum() > 0


def test_using_a_history_model_without_its_data_is_a_clear_error():
    _, data, model = setup()
    with pytest.raises(RuntimeError, match="model.attach"):
        model.user_reps(torch.zeros(1, dtype=torch.long))


def test_without_history_there_is_no_item_hist_table():
    _, _, model = setup(history=False)
    assert model.encoder.item_hist is None
    assert not any("item_hist" in n for n, _ in model.named_parameters())


def test_model_history_must_be_a_bool():
    from fedmtl.errors import ConfigError
    with pytest.raises(ConfigError, match="model.history"):
        validate(compose(["model.history=maybe"]))
