"""Server optimisers under privacy: FedAdam (and the FedOpt family, FedAvgM) step from the
mean a privacy mode releases (the DP-noised mean, SecAgg+'s unmasked mean), which is
post-processing; they never see an un-noised mean in a DP mode."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.federation import privacy, secagg_round, strategies
from fedmtl.simulate import run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu"]
ADAM = ["strategy=fedadam", "strategy.eta=0.05", "strategy.tau=0.001"]


@pytest.fixture
def trace(monkeypatch):
    """Every release a privacy mode made, what the optimiser was given, and what it returned."""
    seen = {"released": [], "given": [], "stepped": []}
    noise = privacy.SecureNoise._add_noise_to_aggregated_arrays
    secure = secagg_round.SecAggRound.__call__
    given = strategies.GivenMean.aggregate_train
    step = strategies.step_from

    def noised(self, aggregated):
        out = noise(self, aggregated)
        seen["released"].append({k: v.numpy().copy() for k, v in out.items()})
        return out

    def unmasked(self, rnd, arrays, grid):
        out = secure(self, rnd, arrays, grid)
        if out[0] is not None:
            seen["released"].append({k: v.numpy().copy() for k, v in out[0].items()})
        return out

    def given_spy(self, server_round, replies):
        if self.given is not None:
            seen["given"].append({k: v.numpy().copy() for k, v in self.given[0].items()})
        return given(self, server_round, replies)

    def step_spy(optimizer, server_round, arrays, mean, metrics=None):
        sent = {k: v.numpy().copy() for k, v in arrays.items()}
        out = step(optimizer, server_round, arrays, mean, metrics)
        seen["stepped"].append((sent, {k: v.numpy().copy() for k, v in out[0].items()}))
        return out

    monkeypatch.setattr(privacy.SecureNoise, "_add_noise_to_aggregated_arrays", noised)
    monkeypatch.setattr(secagg_round.SecAggRound, "__call__", unmasked)
    monkeypatch.setattr(strategies.GivenMean, "aggregate_train", given_spy)
    monkeypatch.setattr(strategies, "step_from", step_spy)
    return seen


@pytest.mark.parametrize("mode", ["central_dp", "client_clip_dp", "secagg", "secagg_dp"])
def test_fedadam_steps_from_exactly_the_released_mean(tmp_path, trace, mode):
    summary = run(compose(TINY + ADAM + [f"privacy={mode}"]), tmp_path)
    assert summary["rounds"] == 2
    assert len(trace["released"]) == len(trace["given"]) == len(trace["stepped"]) == 2
    for released, given in zip(trace["released"], trace["given"]):
        assert released.keys() == given.keys()
        assert all(np.array_equal(released[k], given[k]) for k in released)  # the noised / unmasked mean itself
    # round 1: Adam from zero moments, computed by hand from the release
    (sent, new), mean = trace["stepped"][0], trace["given"][0]
    eta, tau, b1, b2 = 0.05, 0.001, 0.9, 0.99
    eta_norm = eta * np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
    for k in sent:
        delta = mean[k].astype(np.float64) - sent[k]
        expected = sent[k] + eta_norm * (1 - b1) * delta / (np.sqrt((1 - b2) * delta ** 2) + tau)
        np.testing.assert_allclose(new[k], expected, rtol=1e-5, atol=1e-6, err_msg=k)
        assert new[k].dtype == sent[k].dtype


def test_the_dp_wrapper_wraps_a_plain_mean_not_the_optimiser():
    p = privacy.ServerPrivacy(compose(TINY + ADAM + ["privacy=central_dp"]), strategies.build_strategy(
        compose(TINY + ADAM + ["privacy=central_dp"])))
    assert isinstance(p.strategy, privacy.StepAfterRelease)
    inner = p.strategy.strategy.strategy  # StepAfterRelease -> DP wrapper -> the strategy it averages with
    assert type(inner).__name__ == "FedAvg" and not isinstance(inner, strategies.GivenMean)
    assert isinstance(p.optimizer, strategies.GivenMean)


def test_server_rate_schedules_reach_the_optimiser():
    cfg = compose(TINY + ADAM + ["privacy=central_dp", "server_lr.schedule=cosine", "num_rounds=3"])
    p = privacy.ServerPrivacy(cfg, strategies.build_strategy(cfg))
    strategies.set_server_rate(p.strategy, cfg, 3)
    assert p.optimizer.eta == pytest.approx(0.0)


@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_medians_stay_refused_with_privacy(name):
    with pytest.raises(ConfigError, match=f"strategy={name}"):
        compose(TINY + [f"strategy={name}", "privacy=secagg"])
