"""Every weighting: one file, one registry line, one conf/weighting/<name>.yaml, and
backward() leaves the final gradient in every trainable parameter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fedmtl.errors import ConfigError
from fedmtl.weighting import REGISTRY, Weighting, build_weighting


CONF = Path(__file__).resolve().parents[2] / "conf" / "weighting"
TASKS = ["rating", "click", "like"]


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_config_name_is_module_name(name):
    cls = REGISTRY[name]
    assert issubclass(cls, Weighting)
    assert cls.__module__ == f"fedmtl.weighting.{name}"
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    assert cfg["name"] == name
    assert isinstance(build_weighting(cfg, TASKS), cls)


def test_every_config_file_is_registered():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(REGISTRY)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_backward_fills_every_trainable_grad_and_returns_float_weights(name, toy_batch, toy):
    model = toy(TASKS)
    weighting = build_weighting(yaml.safe_load((CONF / f"{name}.yaml").read_text()), TASKS)
    x, targets = toy_batch
    weights = weighting.backward(model.losses(x, targets), list(model.shared.parameters()))
    assert set(weights) == set(TASKS) and all(type(w) is float and w > 0 for w in weights.values())
    for n, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, n


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_backward_with_nothing_shared_trains_the_personal_parts(name, toy_batch, toy):
    """FedRep's head phase passes no shared parameters."""
    model = toy(TASKS)
    model.shared.requires_grad_(False)
    weighting = build_weighting({"name": name}, TASKS)
    x, targets = toy_batch
    weighting.backward(model.losses(x, targets), [])
    assert all(p.grad is not None for p in model.heads.parameters())
    assert all(p.grad is None for p in model.shared.parameters())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_single_task(name, toy_batch, toy):
    model = toy(["rating"])
    x, targets = toy_batch
    weights = build_weighting({"name": name}, ["rating"]).backward(model.losses(x, targets),
                                                                    list(model.shared.parameters()))
    assert weights == {"rating": pytest.approx(1.0)}


def test_unknown_name_and_unknown_option_are_config_errors():
    with pytest.raises(ConfigError, match="weighting=nope: expected one of"):
        build_weighting({"name": "nope"}, TASKS)
    with pytest.raises(ConfigError, match="weighting=dwa: .*'temp'"):
        build_weighting({"name": "dwa", "temp": 1.0}, TASKS)


def test_a_wrong_option_stops_the_run_at_start_up():
    from fedmtl.config import compose

    with pytest.raises(ConfigError, match=r"weighting.alfa: unknown key for weighting=gradnorm \(it takes alpha\)"):
        compose(["weighting=gradnorm", "+weighting.alfa=1"])
