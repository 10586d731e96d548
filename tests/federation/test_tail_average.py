"""average_last=K: the evaluated and saved model is the mean of the last K rounds' global
models, while training goes on from each round's own model."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.federation.server_app import TailAverage
from fedmtl.model import saved as saved_model
from fedmtl.simulate import run


def record(value):
    return ArrayRecord({"w": Array(np.full(3, value, np.float32))})


def test_mean_of_the_last_k_rounds_only_and_in_the_sent_dtype():
    tail = TailAverage({"num_rounds": 5, "average_last": 2})
    for rnd, value in enumerate([10.0, 20.0, 30.0], start=1):
        tail.update(rnd, record(value))
        assert tail.model(record(value))["w"].numpy()[0] == value  # rounds 1-3: not averaging yet
    tail.update(4, record(1.0))
    tail.update(5, record(4.0))
    out = tail.model(record(4.0))["w"].numpy()
    np.testing.assert_array_equal(out, np.full(3, 2.5, np.float32))
    assert out.dtype == np.float32
    restored = TailAverage({"num_rounds": 5, "average_last": 2})
    restored.load_state_dict(tail.state_dict())
    assert restored.model(record(0.0))["w"].numpy()[0] == 2.5


def saved_shared(tmp_path, name, *overrides):
    cfg = compose(["num_clients=6", "strategy=fedadam", "strategy.eta=0.05", "eval_every=10",
                   "checkpoint_every=0", *overrides])
    out = tmp_path / name
    out.mkdir()
    metrics = run(cfg, out)["metrics"]
    return saved_model.load(out).arrays, metrics


def test_a_run_saves_and_scores_the_mean_of_its_last_rounds(tmp_path):
    """Same seed, same bits: a 2-round run's model is round 2 of the 3-round run, so the
    3-round run with average_last=2 must save the mean of those two models."""
    two, _ = saved_shared(tmp_path, "two", "num_rounds=2")
    three, plain_metrics = saved_shared(tmp_path, "three", "num_rounds=3")
    averaged, avg_metrics = saved_shared(tmp_path, "avg", "num_rounds=3", "average_last=2")
    assert any(np.abs(two[k] - three[k]).max() > 1e-4 for k in two)  # the rounds differ
    for k in three:
        np.testing.assert_allclose(averaged[k], (two[k] + three[k]) / 2, rtol=1e-5, atol=1e-6)
    assert avg_metrics != plain_metrics  # the evaluation scored the averaged model
    one, one_metrics = saved_shared(tmp_path, "one", "num_rounds=3", "average_last=1")
    assert one_metrics == plain_metrics and all(np.array_equal(one[k], three[k]) for k in three)


def test_average_last_beyond_the_rounds_averages_them_all():
    tail = TailAverage(compose(["num_rounds=3", "average_last=10"]))
    for rnd, value in enumerate([1.0, 2.0, 6.0], start=1):
        tail.update(rnd, record(value))
    assert tail.model(record(6.0))["w"].numpy()[0] == 3.0
    with pytest.raises(ConfigError, match="average_last=-1: must be >= 0"):
        compose(["average_last=-1"])
