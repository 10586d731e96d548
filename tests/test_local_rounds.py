"""aggregate=: what one client trains in a round. encoder and all train everything
at once; fedrep trains the personal parts with the encoder frozen, then the encoder
with the personal parts frozen."""

from __future__ import annotations

import pytest
import torch

import fedmtl.local_rounds as local_rounds
from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.federation.client_app import train_config
from fedmtl.model import build_model, personal_names, shared_names
from fedmtl.weighting import build_weighting


def setup(aggregate, *overrides):
    cfg = compose([f"aggregate={aggregate}", "dataset.n_users=40", "dataset.n_items=30", "num_clients=4",
                   "local_epochs=2", *overrides])
    fed = federation_for(cfg)
    data = fed.partition_data(0)
    model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, seed=0)
    return cfg, data, model


def record_phases(monkeypatch):
    """Wrap local_rounds.local_train: for each call, its epochs, shared names and the
    parameters it changed."""
    calls = []
    real = local_rounds.local_train

    def spy(model, data, tasks, weighting, tcfg, seed, shared=None, trainable=None):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = real(model, data, tasks, weighting, tcfg, seed, shared=shared, trainable=trainable)
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        calls.append({"epochs": tcfg.epochs, "shared": shared, "trainable": trainable, "changed": changed})
        return out

    monkeypatch.setattr(local_rounds, "local_train", spy)
    return calls


def run_round(cfg, data, model):
    return local_rounds.client_round(model, data, cfg["tasks"], build_weighting(cfg["weighting"], cfg["tasks"]),
                                 train_config(cfg), cfg, seed=0)


@pytest.mark.parametrize("aggregate", ["encoder", "all"])
def test_encoder_and_all_train_everything_in_one_phase(monkeypatch, aggregate):
    cfg, data, model = setup(aggregate)
    calls = record_phases(monkeypatch)
    result = run_round(cfg, data, model)
    assert len(calls) == 1
    (call,) = calls
    assert call["epochs"] == 2 and call["trainable"] is None
    assert call["shared"] == shared_names(model, aggregate)
    assert {"personal.user_emb.weight", "encoder.item_emb.weight"} <= call["changed"]
    assert set(result.losses) == set(cfg["tasks"])


def test_all_shares_the_heads_and_encoder_does_not():
    _, _, model = setup("encoder")
    heads = {n for n in shared_names(model, "all") if n.startswith("personal.heads.")}
    assert heads and not heads & set(shared_names(model, "encoder"))


def test_fedrep_trains_the_personal_parts_then_the_encoder(monkeypatch):
    cfg, data, model = setup("fedrep", "fedrep.head_epochs=3")
    calls = record_phases(monkeypatch)
    run_round(cfg, data, model)
    shared, personal = set(shared_names(model, "fedrep")), set(personal_names(model, "fedrep"))
    assert shared == set(shared_names(model, "encoder"))
    head_phase, body_phase = calls
    assert head_phase["epochs"] == 3 and set(head_phase["trainable"]) == personal
    assert body_phase["epochs"] == 2 and set(body_phase["trainable"]) == shared
    assert head_phase["changed"] and head_phase["changed"] <= personal  # encoder frozen
    assert body_phase["changed"] and body_phase["changed"] <= shared  # heads and users frozen


def test_fedrep_head_epochs_default_to_one(monkeypatch):
    cfg, data, model = setup("fedrep")
    calls = record_phases(monkeypatch)
    run_round(cfg, data, model)
    assert [c["epochs"] for c in calls] == [1, 2]


def test_training_leaves_every_parameter_trainable():
    cfg, data, model = setup("fedrep")
    run_round(cfg, data, model)
    assert all(p.requires_grad for p in model.parameters())
