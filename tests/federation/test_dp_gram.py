"""click_mix's item Gram under client-level DP (client_clip_dp, secagg_dp): each client's part is
scaled to Frobenius norm <= click_mix.dp_clip, the sum takes N(0, (z * dp_clip)^2) on each entry
of its upper triangle (client_clip_dp: the server's noise; secagg_dp: each client's share,
inside SecAgg+), and the release is one more event in the run's ledger."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl import itemitem, secure_random
from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.federation import click_mix
from fedmtl.federation.accounting import Ledger, noise_multiplier
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run

BASE = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=8", "num_rounds=2", "device=cpu",
        "aggregate=all", "click_mix.weight=0.3", "click_mix.lam=50", "click_mix.dp_clip=6.0",
        "click_mix.dp_noise_multiplier=2.0", "strategy=fedavg"]
TINY = BASE + ["privacy.noise_multiplier=0.8"]


def test_a_part_is_scaled_to_the_clip_and_small_parts_stay_whole():
    block = np.array([[3.0, 2.0], [2.0, 4.0]])
    np.testing.assert_array_equal(itemitem.clip_part(block, 100.0), block)
    clipped = itemitem.clip_part(block, 1.0)
    assert 1.0 - 1e-5 < np.linalg.norm(clipped) <= 1.0  # just inside the bound
    np.testing.assert_allclose(clipped / clipped[0, 0], block / block[0, 0])  # scaled, not reshaped


def test_every_clipped_part_passes_the_servers_bound():
    """A client's clipped part (float32, as gram_part makes it) is within dp_clip as the server
    measures it, for parts of 1 to 900 items (the ML-100k benchmark once saw 4 of 943 honest
    parts refused at a norm of 20.00 against dp_clip 20)."""
    import torch
    from flwr.app import Array, ArrayRecord, RecordDict

    from fedmtl.federation.screening import validate_gram_part
    rng = np.random.default_rng(0)
    for k in [1, 2, 7, 50, 199, 333, 512, 737, 900]:
        mask = torch.from_numpy(rng.random((int(rng.integers(1, 4)), 1000)) < k / 1000)
        items, block = itemitem.gram_part(mask)
        part = itemitem.clip_part(block, 20.0)
        assert part.dtype == block.dtype
        content = RecordDict({"gram": ArrayRecord({"items": Array(items), "block": Array(part)})})
        assert validate_gram_part(content, 1000, 20.0) is None, k


@pytest.mark.parametrize("mode", ["client_clip_dp", "secagg_dp"])
def test_the_dp_gram_is_one_more_release_in_the_ledger(tmp_path, mode):
    summary = run(compose(TINY + [f"privacy={mode}"]), tmp_path)
    p = summary["privacy"]
    assert p["releases"] == 3 and p["gram_noise_multiplier"] == pytest.approx(2.0)
    ledger = Ledger(8, 8, 1e-5)
    ledger.spend(2.0, everyone=True)
    ledger.spend(0.8)
    ledger.spend(0.8)
    assert p["epsilon"] == pytest.approx(ledger.epsilon(), rel=1e-9)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert rows[0]["privacy"]["releases"] == 2  # the Gram's, then round 1's


def _gram_sums(monkeypatch) -> list:
    """Record the Gram matrices the server solves EASE on."""
    seen = []
    real = click_mix.ItemItem.__init__

    def spy(self, cfg, gram, *a, **k):
        seen.append(np.array(gram))
        real(self, cfg, gram, *a, **k)

    monkeypatch.setattr(click_mix.ItemItem, "__init__", spy)
    return seen


def test_both_modes_sum_the_same_clipped_parts(tmp_path, monkeypatch):
    """With the noise switched off, client_clip_dp's Gram (parts in the clear, clipped by each
    client) and secagg_dp's (the same parts through SecAgg+) are the same matrix, and it is the
    sum of the clipped parts: below the clear Gram wherever a part was scaled."""
    monkeypatch.setattr(secure_random, "gaussian", lambda shape, std, dtype=np.float64: np.zeros(shape, dtype))
    seen = _gram_sums(monkeypatch)
    run(compose(TINY + ["privacy=client_clip_dp", "num_rounds=1"]), tmp_path / "clip")
    run(compose(TINY + ["privacy=secagg_dp", "num_rounds=1"]), tmp_path / "secagg_dp")
    run(compose(BASE + ["privacy=none", "num_rounds=1"]), tmp_path / "none")
    clip, secure, clear = seen
    # SecAgg+ quantises each client's chunk (stochastic rounding) to a step of 2 * 64 / 2**22 = 3.05e-5:
    # 8 clients' sum is within 2.4e-4
    np.testing.assert_allclose(secure, clip, atol=2.5e-4)
    from fedmtl.data import federation_for
    cfg = compose(TINY + ["privacy=client_clip_dp"])
    fed = federation_for(cfg)
    want = np.zeros_like(clear)
    for pid in range(8):
        items, block = itemitem.gram_part(fed.partition_data(pid).train_mask())
        itemitem.add_part(want, items, itemitem.clip_part(block, 6.0))
    np.testing.assert_allclose(clip, want, rtol=1e-5, atol=1e-6)
    assert (clip <= clear + 1e-9).all() and (clip < clear - 1e-6).any()


def test_the_noise_is_on_the_released_gram(tmp_path, monkeypatch):
    """The noised Gram differs from the clipped sum by about z * dp_clip per entry, symmetric."""
    seen = _gram_sums(monkeypatch)
    run(compose(TINY + ["privacy=client_clip_dp", "num_rounds=1"]), tmp_path / "noised")
    monkeypatch.setattr(secure_random, "gaussian", lambda shape, std, dtype=np.float64: np.zeros(shape, dtype))
    run(compose(TINY + ["privacy=client_clip_dp", "num_rounds=1"]), tmp_path / "clean")
    noise = seen[0] - seen[1]
    np.testing.assert_allclose(noise, noise.T)
    assert np.std(noise[np.triu_indices(40)]) == pytest.approx(2.0 * 6.0, rel=0.15)


def test_a_part_above_the_clip_is_left_out(tmp_path, monkeypatch, caplog):
    """A client that does not clip its part: the server leaves it out of the Gram (one line)."""
    import logging

    from fedmtl.federation import client_app
    monkeypatch.setattr(client_app, "clip_parts", lambda parts, clip: {k: v * 10 for k, v in parts.items()})  # hostile: above the bound
    caplog.set_level(logging.WARNING, logger="fedmtl")
    with pytest.raises(Exception, match="none of the 8 clients sent its part"):
        run(compose(TINY + ["privacy=client_clip_dp", "num_rounds=1"]), tmp_path)
    assert "above click_mix.dp_clip=6" in caplog.text


def test_the_budget_picks_training_noise_with_the_gram_counted():
    cfg = compose(TINY + ["privacy=client_clip_dp", "privacy.noise_multiplier=null", "privacy.target_epsilon=10"])
    z = noise_multiplier(cfg)
    after = Ledger(8, 8, 1e-5).epsilon_after(z, 2, gram=2.0)
    assert 9.9 <= after <= 10.0
    alone = compose(TINY + ["privacy=client_clip_dp", "privacy.noise_multiplier=null", "privacy.target_epsilon=10",
                            "click_mix.weight=0"])
    assert noise_multiplier(alone) < z  # without the Gram's release, training may take less noise
    tight = compose(TINY + ["privacy=client_clip_dp", "privacy.noise_multiplier=null", "privacy.target_epsilon=1"])
    with pytest.raises(ConfigError, match="DP Gram alone"):
        noise_multiplier(tight)


@pytest.mark.parametrize("mode", ["central_dp", "local_dp"])
def test_click_mix_stays_refused_where_the_gram_would_go_unclipped(mode):
    with pytest.raises(ConfigError, match=f"with privacy={mode}"):
        compose(BASE + [f"privacy={mode}"])
