"""Every research knob composes with the others and runs a federation end to end:
one tiny synthetic run per strategy, weighting, architecture, aggregate mode and
task set, each checked for complete rounds and the metrics of its tasks."""

from __future__ import annotations

import json

import pytest

from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.knob_names import STRATEGIES
from fedmtl.model.towers import ARCHITECTURES
from fedmtl.simulate import run
from fedmtl.weighting import REGISTRY as WEIGHTINGS

TINY = ["dataset.n_users=40", "dataset.n_items=30", "num_clients=4", "num_rounds=2", "local_epochs=1",
        "save_model=false"]
TEST_KEYS = {"rating": "rating.rmse", "click": "click.ndcg@10", "like": "like.auc"}


def run_tiny(tmp_path, *overrides):
    cfg = compose([*TINY, *overrides])
    summary = run(cfg, tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["answered"] == 4 and r["failed"] == 0 for r in rows)
    for t in cfg["tasks"]:
        assert summary["metrics"][TEST_KEYS[t]] is not None
        assert all(f"loss.{t}" in r["train"] and f"weight.{t}" in r["train"] for r in rows)
    for t in set(TEST_KEYS) - set(cfg["tasks"]):
        assert TEST_KEYS[t] not in summary["metrics"] and f"loss.{t}" not in rows[-1]["train"]
    return cfg, summary, rows


# two local steps a round: FedProx's proximal term is zero at a round's first step, so with
# one step it would train exactly as FedAvg does
TWO_STEPS = ["local_epochs=2"]


@pytest.fixture(scope="module")
def fedavg_run(tmp_path_factory):
    """The same tiny run under strategy=fedavg: what an ignored `strategy=` would give."""
    return run_tiny(tmp_path_factory.mktemp("fedavg"), "strategy=fedavg", *TWO_STEPS)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_strategy_runs(tmp_path, strategy, fedavg_run):
    """Each strategy runs, and it is the one that aggregated: the models it gives (its test
    metrics after the last round, to the bit) differ from FedAvg's on the same data and seed."""
    cfg, summary, _ = run_tiny(tmp_path, f"strategy={strategy}", *TWO_STEPS)
    assert cfg["strategy"]["name"] == strategy
    _, avg, _ = fedavg_run
    if strategy == "fedavg":
        assert summary["metrics"] == avg["metrics"]  # same run, same figures: the comparison below means something
    else:
        assert summary["metrics"] != avg["metrics"], f"strategy={strategy} gave FedAvg's model: it was not used"


@pytest.mark.parametrize("weighting", sorted(WEIGHTINGS))
def test_every_weighting_runs_and_its_weights_are_logged(tmp_path, weighting):
    """The round's weights are the clients' mean weights, in metrics.jsonl's "train"."""
    cfg, _, rows = run_tiny(tmp_path, f"weighting={weighting}", "local_epochs=2")
    weights = [rows[-1]["train"][f"weight.{t}"] for t in cfg["tasks"]]
    assert all(w > 0 for w in weights)
    if weighting in ("uncertainty", "dwa", "gradnorm"):  # learned or adaptive: off 1 by round 2
        assert max(abs(w - 1.0) for w in weights) > 1e-4


@pytest.mark.parametrize("model", sorted(ARCHITECTURES))
def test_every_architecture_runs(tmp_path, model):
    run_tiny(tmp_path, f"model={model}", "model.dim=8", "model.hidden=8")


@pytest.mark.parametrize("aggregate", ["encoder", "all", "fedrep"])
def test_every_aggregate_mode_runs(tmp_path, aggregate):
    run_tiny(tmp_path, f"aggregate={aggregate}")


@pytest.mark.parametrize("tasks", ["[rating]", "[click]", "[like]", "[like,rating]"])
def test_any_task_subset_runs(tmp_path, tasks):
    run_tiny(tmp_path, f"tasks={tasks}")


@pytest.mark.parametrize("overrides", [
    ["strategy=fedadam", "weighting=pcgrad", "model=mmoe", "aggregate=all", "tasks=[click,like]"],
    ["strategy=fedprox", "weighting=gradnorm", "model=ple", "aggregate=fedrep", "tasks=[rating]"],
    ["strategy=fedavgm", "weighting=uncertainty", "exchange=sparse", "tasks=[rating,click]"],
    ["strategy=fedmedian", "weighting=dwa", "model=mmoe", "aggregate=all"],
])
def test_knobs_compose(tmp_path, overrides):
    run_tiny(tmp_path, *overrides, "model.dim=8", "model.hidden=8")


def test_an_unknown_task_is_a_one_line_error():
    with pytest.raises(ConfigError) as e:
        compose([*TINY, "tasks=[rating,purchase]"])
    assert "\n" not in str(e.value) and "'purchase'" in str(e.value)
