"""Same seed, same config, same bits: how often a run evaluates, or in which order its
clients were sampled and answered, does not change what it trains."""

from __future__ import annotations

from fedmtl.config import compose
from fedmtl.simulate import run


def final_metrics(tmp_path, name, *overrides):
    cfg = compose(["num_clients=10", "num_rounds=6", "save_model=false", "checkpoint_every=0", *overrides])
    out = tmp_path / name
    out.mkdir()
    return run(cfg, out)["metrics"]


def test_evaluating_every_round_or_only_at_the_end_trains_the_same_model(tmp_path):
    every = final_metrics(tmp_path, "every", "eval_every=1")
    last = final_metrics(tmp_path, "last", "eval_every=6")
    assert every == last


def test_partial_participation_samples_the_same_clients_whatever_the_evaluation(tmp_path):
    a = final_metrics(tmp_path, "a", "eval_every=1", "fraction_train=0.5", "fraction_evaluate=0.5")
    b = final_metrics(tmp_path, "b", "eval_every=3", "fraction_train=0.5", "fraction_evaluate=0.5")
    # the training clients of every round are the same, so the models are; the evaluation at
    # round 6 samples the same clients too
    assert a == b
