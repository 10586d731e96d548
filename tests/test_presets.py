"""The experiment= presets in simulations/experiment: what each sets, and that every run of
every preset sweep is a valid config."""

from __future__ import annotations

import pytest
from hydra import compose as hcompose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from fedmtl import itemitem
from fedmtl.config import CONF_DIR, SIMULATIONS_DIR, compose, validate
from fedmtl.errors import ConfigError

PATH = "dataset.path=/nowhere/ml-100k"  # composing never reads the data
PRESETS = sorted(p.stem for p in (SIMULATIONS_DIR / "experiment").glob("*.yaml"))


def test_the_federated_preset_is_the_readme_setting():
    cfg = compose(["experiment=ml100k_federated", PATH])
    assert cfg["dataset"]["name"] == "movielens100k" and cfg["mode"] == "federated"
    assert (cfg["num_clients"], cfg["aggregate"], cfg["num_rounds"], cfg["eval_every"]) == (943, "all", 45, 5)
    assert cfg["strategy"] == {"name": "fedadam", "eta": 0.05, "beta_1": 0.9, "beta_2": 0.99, "tau": 0.0001}
    assert (cfg["train"]["optimizer"], cfg["train"]["shared_lr"]) == ("sgd", 0.05)
    assert (cfg["train"]["lr"], cfg["train"]["l2"], cfg["server_decay"]) == (0.02, 0.25, 0.01)
    assert (cfg["average_last"], cfg["server_lr"]["schedule"]) == (10, "constant")
    assert cfg["exchange"] == {"name": "sparse", "pad_rows": 200, "dtype": "int8"}
    assert cfg["weighting"] == {"name": "fixed", "weights": {"rating": 1.0, "click": 2.0, "like": 1.0}}
    assert cfg["click_mix"] == {"weight": 0.1, "lam": 300.0, "grid_weight": [], "grid_lam": [], "dp_clip": 20.0,
                                "dp_noise_multiplier": 1.0, "secure_gram_mb": 2048, "seq_weight": 0.0, "seq_window": 10, "seq_last": 5,
                                "seq_decay": 0.7}


def test_the_click_mix_selection_preset_trains_the_preset_on_validation_and_scores_a_grid_holding_it():
    fed = compose(["experiment=ml100k_federated", PATH])
    jobs = sweep_jobs("ml100k_select_click_mix")
    assert jobs == [["seed=0"], ["seed=1"], ["seed=2"]]
    for job in jobs:
        cfg = compose(["experiment=ml100k_select_click_mix", PATH, *job])
        assert cfg["split"]["validation"] and cfg["click_mix"]["weight"] == 0
        grid = {(w, lam) for _, w, lam in itemitem.grid(cfg)}
        assert (fed["click_mix"]["weight"], fed["click_mix"]["lam"]) in grid and (0.0, 300.0) in grid
        # everything that shapes training is the preset's
        for key in ("num_rounds", "num_clients", "strategy", "train", "exchange", "weighting", "model",
                    "server_decay", "average_last", "local_epochs"):
            assert cfg[key] == fed[key], key


@pytest.mark.parametrize("preset, mode, epochs, lr, l2, decay", [("ml100k_centralized", "centralized", 12, 0.002, 0.0, 0.001),
                                                                  ("ml100k_local", "local", 20, 0.01, 0.5, 0.0)])
def test_the_baseline_presets_share_the_model_and_loss_weights(preset, mode, epochs, lr, l2, decay):
    cfg = compose([f"experiment={preset}", PATH])
    fed = compose(["experiment=ml100k_federated", PATH])
    assert (cfg["mode"], cfg["baseline_epochs"], cfg["train"]["lr"]) == (mode, epochs, lr)
    assert (cfg["train"]["l2"], cfg["train"]["weight_decay"]) == (l2, decay)
    assert cfg["weighting"] == fed["weighting"] and cfg["model"] == fed["model"]
    assert cfg["click_mix"] == fed["click_mix"]
    assert cfg["dataset"] == fed["dataset"] and cfg["split"] == fed["split"]


def test_a_command_line_value_wins_over_the_preset():
    cfg = compose(["experiment=ml100k_federated", PATH, "num_rounds=3", "strategy.eta=0.01"])
    assert cfg["num_rounds"] == 3 and cfg["strategy"]["eta"] == 0.01


@pytest.mark.parametrize("preset", PRESETS)
def test_the_data_path_stays_the_users_to_give(preset):
    with pytest.raises(ConfigError, match=r"^dataset.path: dataset=movielens100k needs the folder"):
        compose([f"experiment={preset}"])


def sweep_jobs(preset: str) -> list[list[str]]:
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        cfg = hcompose("config", overrides=[f"experiment={preset}", PATH], return_hydra_config=True)
    params = OmegaConf.to_container(cfg.hydra.sweeper.params or OmegaConf.create({}), resolve=False)
    args = [f"{k}={v}" for k, v in params.items()]
    return [job for batch in BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
            for job in batch]


@pytest.mark.parametrize("preset, key, values", [
    ("ml100k_tasks", "tasks", [["rating"], ["like"], ["click"], ["rating", "like", "click"]]),
    ("ml100k_tasks_centralized", "tasks", [["rating"], ["like"], ["click"], ["rating", "like", "click"]]),
    ("ml100k_clients", "num_clients", [10, 100, 943]),
    ("ml100k_strategies", "strategy.name", ["fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad",
                                            "fedmedian", "fedtrimmedavg"]),
    ("ml100k_weightings", "weighting.name", ["fixed", "uncertainty", "dwa", "gradnorm", "pcgrad"]),
    ("ml100k_models", "model.name", ["shared_bottom", "mmoe", "ple"]),
])
def test_every_run_of_a_preset_sweep_is_a_valid_config(preset, key, values):
    jobs = sweep_jobs(preset)
    assert len(jobs) == len(values)
    got = []
    for job in jobs:
        cfg = compose([f"experiment={preset}", PATH, *job])  # validate() passes
        node = cfg
        for part in key.split("."):
            node = node[part]
        got.append(node)
        assert cfg["dataset"]["name"] == "movielens100k"
        # each MovieLens preset's own regulariser (never the default 1e-4): federated row L2 0.25 with
        # server decay, centralised uniform decay without row L2, the older presets row L2 0.5
        assert cfg["train"]["l2"] == (0.25 if cfg["server_decay"] else 0.0 if cfg["train"]["weight_decay"] else 0.5)
    assert got == values


def test_single_run_presets_are_not_sweeps():
    for preset in ("ml100k_federated", "ml100k_fedavg", "ml100k_centralized", "ml100k_local"):
        assert sweep_jobs(preset) == [[]]


def write_tiny_ml100k(folder, n_users=12, n_items=30, per_user=12, seed=0):
    """A GroupLens-layout ml-100k folder with random ratings (ids 1-based, as in the real files)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    rows = [f"{u}\t{i}\t{rng.integers(1, 6)}\t{880000000 + k}\n" for u in range(1, n_users + 1)
            for k, i in enumerate(rng.choice(np.arange(1, n_items + 1), size=per_user, replace=False))]
    (folder / "u.data").write_text("".join(rows), encoding="latin-1")
    occupations = ["writer", "other", "student"]
    (folder / "u.user").write_text("".join(f"{u}|{20 + u}|{'MF'[u % 2]}|{occupations[u % 3]}|0000{u % 10}\n"
                                           for u in range(1, n_users + 1)), encoding="latin-1")
    (folder / "u.item").write_text("".join(f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|"
                                           + "|".join("1" if g == i % 19 else "0" for g in range(19)) + "\n"
                                           for i in range(1, n_items + 1)), encoding="latin-1")
    return folder


def test_the_federated_preset_runs_end_to_end(tmp_path):
    """The MovieLens preset itself (aggregate=all, FedAdam, sparse int8 exchange, server decay,
    tail averaging) runs on a tiny GroupLens folder: every round aggregates, and the saved
    model differs from the initial one. (A decay that broke 0-d arrays crashed only here.)"""
    import json
    import math

    import torch

    from fedmtl.simulate import run

    data = write_tiny_ml100k(tmp_path / "ml-100k")
    cfg = compose(["experiment=ml100k_federated", f"dataset.path={data}", "num_clients=12", "num_rounds=3",
                   "average_last=2", "eval_every=1", "device=cpu"])
    run(cfg, tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3]
    assert all(r["answered"] == 12 and r["failed"] == 0 for r in rows)
    assert rows[-1]["train"]["loss.rating"] < rows[0]["train"]["loss.rating"]  # the rounds learned
    final = rows[-1]["test"]
    for key in ("rating.rmse", "like.auc", "click.hr@10", "click.ndcg@10"):
        assert math.isfinite(final[key]), key
    saved = torch.load(tmp_path / "run" / "model_shared.pt")
    assert "personal.heads.rating.offset" in saved  # aggregate=all: the heads' 0-d offsets are shared
    assert saved["personal.heads.rating.offset"].dim() == 0


def test_the_dp_preset_is_the_recipe_under_client_clip_dp_at_epsilon_8():
    """experiment=ml100k_dp (docs/privacy.md, "The DP recipe"): the recipe's knobs, DP rows at
    epsilon 8, and one override to put the same release inside SecAgg+."""
    cfg = compose(["experiment=ml100k_dp", PATH])
    base = compose(["experiment=ml100k_federated", PATH])
    for key in ("num_clients", "aggregate", "num_rounds", "exchange", "train", "average_last", "server_decay"):
        assert cfg[key] == base[key], key
    p = cfg["privacy"]
    assert (p["name"], p["target_epsilon"], p["noise_multiplier"]) == ("client_clip_dp", 8.0, None)
    assert p["clipping"] == "fixed"
    assert (p["clipping_norm"], p["count_share"], p["max_rows"]) == (0.3, 0.1, 256)
    assert cfg["strategy"]["tau"] == 0.003 and cfg["click_mix"]["weight"] == 0.0
    assert p["adam_noise_correction"] == 0.1 and validate(cfg)["strategy"]["name"] == "fedadam"
    secure = compose(["experiment=ml100k_dp", PATH, "privacy=secagg_dp"])
    assert secure["privacy"]["name"] == "secagg_dp" and secure["privacy"]["clipping_norm"] == 0.3
    assert secure["privacy"]["adam_noise_correction"] == 0.1
