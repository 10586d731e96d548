"""fedmtl/model/parts.py: the one place that says what is shared and what stays personal."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.model import build_model, get_arrays, personal_names, set_arrays, shared_names
from fedmtl.model.parts import AGGREGATE_MODES

TASKS = ["rating", "click", "like"]
META = {"n_items": 7, "user_cards": [3, 2], "item_cards": [4], "item_cat": np.arange(7)[:, None] % 4,
        "item_multi": (np.arange(21).reshape(7, 3) % 2).astype(np.float32)}
ARCHS = {"shared_bottom": {}, "mmoe": {"num_experts": 3}, "ple": {"num_experts": 2, "num_levels": 2}}


def model_of(arch: str, seed: int = 0, n_users: int = 4):
    cfg = {"name": arch, "dim": 8, "hidden": 16, "layers": 1, "dropout": 0.0, "init_std": 0.1, **ARCHS[arch]}
    return build_model(cfg, TASKS, n_users, np.zeros((n_users, 2), np.int64), META, seed)


@pytest.fixture(params=list(ARCHS))
def arch(request) -> str:
    return request.param


@pytest.fixture
def model(arch):
    return model_of(arch)


def names(model) -> set[str]:
    return {n for n, _ in model.named_parameters()}


def test_aggregate_encoder_shares_exactly_the_encoder(model):
    shared = shared_names(model, "encoder")
    assert shared and set(shared) == {n for n in names(model) if n.startswith("encoder.")}
    assert shared == shared_names(model, "fedrep")


def test_aggregate_all_shares_the_heads_but_not_the_users(model):
    shared = set(shared_names(model, "all"))
    assert {n for n in names(model) if n.startswith("encoder.")} <= shared
    assert {f"personal.heads.{t}.proj" for t in TASKS} | {f"personal.heads.{t}.offset" for t in TASKS} <= shared
    assert shared == names(model) - {"personal.user_emb.weight", "personal.user_bias.weight"}


@pytest.mark.parametrize("aggregate", AGGREGATE_MODES)
def test_user_embeddings_and_biases_are_never_shared(model, aggregate):
    shared = shared_names(model, aggregate)
    assert not [n for n in shared if n.startswith("personal.user_")]
    personal = personal_names(model, aggregate)
    assert {"personal.user_emb.weight", "personal.user_bias.weight"} <= set(personal)


@pytest.mark.parametrize("aggregate", AGGREGATE_MODES)
def test_shared_and_personal_partition_the_parameters(model, aggregate):
    shared, personal = shared_names(model, aggregate), personal_names(model, aggregate)
    assert not set(shared) & set(personal)
    assert set(shared) | set(personal) == names(model)


@pytest.mark.parametrize("aggregate", ["encoder", "fedrep"])
def test_heads_stay_personal_unless_everything_is_aggregated(model, aggregate):
    assert not [n for n in shared_names(model, aggregate) if n.startswith("personal.")]
    assert {n for n in personal_names(model, aggregate) if n.startswith("personal.heads.")}


def test_an_unknown_aggregate_mode_is_refused(model):
    with pytest.raises(ValueError, match="aggregate='heads'"):
        shared_names(model, "heads")


def test_shared_arrays_do_not_depend_on_the_number_of_users():
    # The server builds a 1-user model; a client one with its own users: same shapes.
    one, many = model_of("mmoe", n_users=1), model_of("mmoe", n_users=9)
    a, b = get_arrays(one, shared_names(one)), get_arrays(many, shared_names(many))
    assert a.keys() == b.keys()
    assert all(a[k].shape == b[k].shape for k in a)
    assert all(np.array_equal(a[k], b[k]) for k in a)  # same seed, same initial shared weights


def test_get_then_set_arrays_round_trips(arch, model):
    other = model_of(arch, seed=1)
    every = [n for n, _ in model.named_parameters()]
    source = get_arrays(model, every)
    before = get_arrays(other, every)
    assert any(not np.array_equal(source[n], before[n]) for n in every)  # the seeds differ
    set_arrays(other, source)
    after = get_arrays(other, every)
    assert all(np.array_equal(source[n], after[n]) for n in every)


def test_get_arrays_returns_copies(model):
    name = "encoder.item_emb.weight"
    arrays = get_arrays(model, [name])
    arrays[name][:] = 123.0
    assert not torch.any(dict(model.named_parameters())[name] == 123.0)


def test_set_arrays_refuses_unknown_names(model):
    with pytest.raises(KeyError, match="encoder.nope"):
        set_arrays(model, {"encoder.nope": np.zeros(1, np.float32)})
