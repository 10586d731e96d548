"""privacy.adam_noise_correction (strategies.NoiseCorrectedAdam): FedAdam over DP rows with
the release's known noise variance taken out of its second moment (DP-AdamBC)."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord

from fedmtl.config import compose, validate
from fedmtl.errors import ConfigError
from fedmtl.federation import privacy, strategies
from fedmtl.simulate import run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu",
        "exchange=sparse", "exchange.pad_rows=5", "privacy=client_clip_dp", "privacy.noise_multiplier=0.5",
        "privacy.clipping_norm=0.5", "strategy=fedadam", "strategy.eta=0.05", "strategy.tau=0.001"]


def _optimizer(overrides: list[str]):
    cfg = validate(compose(TINY + overrides))
    opt = strategies.server_optimizer(cfg)
    arrays = ArrayRecord({"w": Array(np.zeros(4, np.float32))})
    return opt, arrays


def _step(opt, arrays, rnd, mean):
    return strategies.step_from(opt, rnd, arrays, ArrayRecord({"w": Array(np.asarray(mean, np.float32))}))[0]["w"].numpy()


def test_without_a_noise_std_the_step_is_fedadams_to_the_bit():
    plain, arrays = _optimizer([])
    corrected, _ = _optimizer(["privacy.adam_noise_correction=0.05"])
    assert isinstance(corrected, strategies.NoiseCorrectedAdam) and not isinstance(plain, strategies.NoiseCorrectedAdam)
    rng = np.random.default_rng(0)
    for rnd in (1, 2, 3):
        mean = rng.normal(size=4)
        a, b = _step(plain, arrays, rnd, mean), _step(corrected, arrays, rnd, mean)
        assert np.array_equal(a, b)
        arrays = ArrayRecord({"w": Array(a)})


def test_the_noise_variance_leaves_the_second_moment_down_to_its_floor():
    """Round 1 from zero moments: v = (1 - b2) d^2 and (1 - b2) s^2 of it is noise. A value whose
    d^2 is below (1 + g) s^2 divides by sqrt(g (1 - b2)) s; one above it by sqrt((1 - b2)(d^2 - s^2))."""
    opt, arrays = _optimizer(["privacy.adam_noise_correction=0.25"])
    eta, tau, b1, b2, g, s = 0.05, 0.001, 0.9, 0.99, 0.25, 0.2
    d = np.array([0.05, -0.1, 0.5, -1.0])  # two below the floor's threshold, two above
    opt.noise_std = {"w": s}
    new = _step(opt, arrays, 1, d)
    eta_norm = eta * math.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)
    v = np.maximum((1 - b2) * (d ** 2 - s ** 2), g * (1 - b2) * s ** 2)
    np.testing.assert_allclose(new, eta_norm * (1 - b1) * d / (np.sqrt(v) + tau), rtol=1e-6)
    plain = eta_norm * (1 - b1) * d / (np.sqrt((1 - b2) * d ** 2) + tau)
    assert (np.abs(new[2:]) > np.abs(plain[2:])).all()  # signal above the noise: larger steps than FedAdam's
    assert opt.noise_std is None  # used once: the next release hands its own


@pytest.mark.parametrize("mode", ["client_clip_dp", "secagg_dp"])
def test_a_dp_rows_run_hands_the_optimiser_each_releases_noise_std(tmp_path, monkeypatch, mode):
    seen = []
    real = strategies.NoiseCorrectedAdam.aggregate_train

    def spy(self, server_round, replies):
        seen.append(dict(self.noise_std))
        return real(self, server_round, replies)

    monkeypatch.setattr(strategies.NoiseCorrectedAdam, "aggregate_train", spy)
    over = [o.replace("client_clip_dp", mode) for o in TINY] + ["save_model=false"]
    summary = run(compose(over + ["privacy.adam_noise_correction=0.05"]), tmp_path / "c")
    assert summary["rounds"] == 2 and len(seen) == 2
    plain = run(compose(over), tmp_path / "p")
    assert summary["privacy"]["epsilon"] == plain["privacy"]["epsilon"]  # post-processing: the same spend
    z_c_m = 0.5 * 0.5 / 6  # z * C / m on every array that is not a row table
    for std in seen:
        rows = {k for k, v in std.items() if np.ndim(v) > 0}
        assert "encoder.item_emb.weight" in rows
        assert all(v == pytest.approx(z_c_m) for k, v in std.items() if k not in rows)
        for k in rows:  # z * C / (k * a divisor of at least 1): at most z * C on a row
            assert std[k].shape[0] == 40 and (std[k] > 0).all() and (std[k] <= 0.5 * 0.5 + 1e-12).all()


def test_a_negative_correction_is_one_line():
    with pytest.raises(ConfigError, match="privacy.adam_noise_correction") as e:
        validate(compose(TINY + ["privacy.adam_noise_correction=-1"]))
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("other", [["strategy=fedyogi"], ["exchange=dense"]])
def test_without_dp_rows_and_fedadam_the_correction_is_dropped_with_one_warning(other, caplog):
    """Switching the strategy or the exchange over the DP preset stays one override."""
    base = [o for o in TINY if not (o.startswith("exchange.") and "exchange=dense" in other)]
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        cfg = validate(compose(base + ["privacy.adam_noise_correction=0.1"] + other))
    assert cfg["privacy"]["adam_noise_correction"] is None
    said = [r.getMessage() for r in caplog.records if "adam_noise_correction" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith("it has nothing to correct: dropped")
    assert not isinstance(strategies.build_strategy(cfg, given_mean=True), strategies.NoiseCorrectedAdam)


def test_a_resumed_run_with_the_correction_ends_as_the_uninterrupted_one(tmp_path, monkeypatch, stop_after):
    """FedAdam's moments are in the checkpoint and the noise std comes with each release: with
    the noise itself off (z still sets the std the correction takes out), a run stopped after
    round 2 of 4 and resumed ends as the run that was not stopped."""
    import torch

    from fedmtl import secure_random

    monkeypatch.setattr(secure_random, "add_gaussian_inplace", lambda arrays, std: None)
    cfg = TINY + ["num_rounds=4", "privacy.noise_multiplier=2.0", "privacy.adam_noise_correction=0.1",
                  "checkpoint_every=1", "save_model=true"]
    ref = run(compose(cfg), tmp_path / "ref")
    stop_after(compose(cfg), tmp_path / "resumed", 2)
    again = run(compose(cfg + ["resume=true"]), tmp_path / "resumed")
    assert again["metrics"] == pytest.approx(ref["metrics"], rel=1e-6)
    a = torch.load(tmp_path / "ref" / "model_shared.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "model_shared.pt", weights_only=True)
    assert all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)
    plain = run(compose([o for o in cfg if "adam_noise_correction" not in o]), tmp_path / "plain")
    assert plain["metrics"]["rating.rmse"] != pytest.approx(ref["metrics"]["rating.rmse"], abs=1e-6)  # it acted
