"""fedmtl/config.py: conf/ composed by Hydra, checked once, wrong values stopped with one line."""

from __future__ import annotations

import json

import pytest
import torch

from fedmtl.config import compose, validate
from fedmtl.errors import ConfigError


@pytest.fixture(scope="module")
def default() -> dict:
    return compose([])


def test_the_default_config_is_a_plain_validated_dict(default):
    assert isinstance(default, dict)
    json.dumps(default)  # plain, JSON-safe values only (it is written to config.json)
    assert default["mode"] == "federated"
    assert default["tasks"] == ["rating", "click", "like"]
    assert default["aggregate"] == "encoder"
    assert default["dataset"]["name"] == "synthetic" and default["model"]["name"] == "shared_bottom"
    assert "hydra" not in default
    assert default["split"]["seed"] == default["seed"]  # split.seed: null means the run's seed


def test_overrides_reach_the_dict():
    cfg = compose(["mode=centralized", "tasks=[rating,like]", "model=mmoe", "num_clients=7", "seed=3",
                   "dataset.n_users=60", "device=cpu"])
    assert cfg["mode"] == "centralized" and cfg["tasks"] == ["rating", "like"]
    assert cfg["model"]["name"] == "mmoe" and cfg["num_clients"] == 7
    assert cfg["dataset"]["n_users"] == 60 and cfg["split"]["seed"] == 3 and cfg["device"] == "cpu"


def test_an_explicit_split_seed_is_kept():
    assert compose(["seed=3", "split.seed=11"])["split"]["seed"] == 11


def config_error(overrides) -> str:
    with pytest.raises(ConfigError) as info:
        compose(overrides)
    msg = str(info.value)
    assert msg and "\n" not in msg, f"not one line: {msg!r}"
    return msg


@pytest.mark.parametrize("overrides, key", [
    (["mode=foo"], "mode=foo"),
    (["tasks=[rating,foo]"], "tasks"),
    (["tasks=[]"], "tasks"),
    (["tasks=[rating,rating]"], "tasks"),
    (["aggregate=heads"], "aggregate=heads"),
    (["device=tpu"], "device=tpu"),
    (["num_clients=0"], "num_clients=0"),
    (["num_rounds=abc"], "num_rounds"),
    (["local_epochs=1.5"], "local_epochs"),
    (["fraction_train=1.5"], "fraction_train=1.5"),
    (["fraction_evaluate=0"], "fraction_evaluate=0"),
    (["train.lr=0"], "train.lr=0"),
    (["train.click_loss=bpr"], "train.click_loss=bpr"),
    (["split.train_frac=0"], "split.train_frac=0"),
    (["dataset.name=netflix"], "dataset.name=netflix"),
    (["dataset=movielens100k"], "dataset.path"),
    (["fedrep.head_epochs=-1"], "fedrep.head_epochs=-1"),
    (["strategy=fedadam", "strategy.eta=abc"], "strategy.eta"),
    (["strategy=fedyogi", "strategy.beta_2=2"], "strategy.beta_2=2"),
    (["strategy=fedavgm", "strategy.server_momentum=-0.1"], "strategy.server_momentum=-0.1"),
    (["strategy=fedprox", "strategy.proximal_mu=-1"], "strategy.proximal_mu=-1"),
    (["strategy=fedtrimmedavg", "strategy.beta=0.5"], "strategy.beta=0.5"),
    (["split=leave_one_out", "transfer.new_users=0.1"], "split=leave_one_out with transfer.new_users"),
])
def test_a_wrong_value_is_one_line_naming_the_key(overrides, key):
    assert key in config_error(overrides)


@pytest.mark.parametrize("overrides, allowed", [
    (["mode=foo"], "'federated', 'centralized', 'local'"),
    (["tasks=[rating,foo]"], "'rating', 'click', 'like'"),
])
def test_a_wrong_choice_lists_what_is_allowed(overrides, allowed):
    assert allowed in config_error(overrides)


@pytest.mark.parametrize("group", ["model", "dataset", "weighting", "strategy"])
def test_an_unknown_config_group_option_names_the_group(group):
    assert f"{group}/unknown" in config_error([f"{group}=unknown"])


def test_an_unknown_key_is_refused():
    assert "no_such_key" in config_error(["no_such_key=1"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_refused():
    msg = config_error(["device=cuda"])
    assert msg.startswith("device=cuda") and "CUDA" in msg


def test_validate_does_not_modify_its_input(default):
    raw = json.loads(json.dumps(default))
    raw["split"]["seed"] = None
    validated = validate(raw)
    assert raw["split"]["seed"] is None and validated["split"]["seed"] == raw["seed"]


def test_validate_reports_a_missing_key(default):
    raw = json.loads(json.dumps(default))
    del raw["train"]["lr"]
    with pytest.raises(ConfigError, match=r"^train\.lr: missing from the config$"):
        validate(raw)


def test_switching_the_strategy_over_a_preset_drops_the_presets_keys_with_a_warning(caplog):
    """experiment=ml100k_federated sets FedAdam's eta and tau; strategy=fedavg over it used to
    fail inside Flower ("unexpected keyword argument 'eta'")."""
    import logging

    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        cfg = compose(["experiment=ml100k_federated", "dataset.path=/nowhere/ml-100k", "strategy=fedavg",
                       "privacy=secagg"])
    assert cfg["strategy"] == {"name": "fedavg"}
    assert any("strategy.eta=0.05 is not a hyper-parameter of strategy=fedavg" in r.getMessage() for r in caplog.records)
    from fedmtl.federation.strategies import build_strategy
    assert type(build_strategy(cfg)).__name__ == "FedAvg"


@pytest.mark.parametrize("weighting", ["uncertainty", "dwa", "gradnorm", "pcgrad"])
def test_switching_the_weighting_over_a_preset_drops_the_presets_weights_with_a_warning(caplog, weighting):
    """experiment=ml100k_federated sets fixed weights ({click: 2}); weighting=uncertainty over it
    used to stop with "Uncertainty.__init__() got an unexpected keyword argument 'weights'"."""
    import logging

    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        cfg = compose(["experiment=ml100k_federated", "dataset.path=/nowhere/ml-100k", f"weighting={weighting}"])
    assert "weights" not in cfg["weighting"] and cfg["weighting"]["name"] == weighting
    assert any(f"weighting.weights={{'click': 2.0}} is not a hyper-parameter of weighting={weighting}" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(ConfigError, match=r"weighting.bogus: unknown key for weighting=dwa \(it takes temperature\)"):
        compose(["weighting=dwa", "+weighting.bogus=1"])


def test_a_key_no_strategy_has_is_refused_in_one_line():
    with pytest.raises(ConfigError, match=r"strategy.bogus: unknown key for strategy=fedadam \(it takes beta_1"):
        compose(["strategy=fedadam", "+strategy.bogus=1"])
