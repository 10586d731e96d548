"""privacy= DP modes: clipping bounds every update, the noise has the configured spread,
the accountant agrees with published and exact references, and target_epsilon stops
a run cleanly with its last good model.
"""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.client.mod.utils import make_ffn
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity
from scipy.stats import norm

from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.federation import strategies
from fedmtl.federation.accounting import Ledger, calibrate_noise, distributed_noise_std, local_dp_multiplier
from fedmtl.federation.client_privacy import GaussianNoiseMod, client_mods
from fedmtl.federation.privacy import ServerPrivacy
from fedmtl.federation.strategies import build_strategy
from fedmtl.simulate import run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu"]


@pytest.fixture
def identity():
    """Messages take their run and source from the task identity, as in a ServerApp
    (run_inprocess sets the same one)."""
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def round_arrays(out) -> dict:
    """The shared arrays of the run's last checkpointed round."""
    from fedmtl.federation.resume import FOLDER, LATEST
    root = out / FOLDER
    folder = root / json.loads((root / LATEST).read_text())["dir"]
    return pickle.loads((folder / "server.pkl").read_bytes())["arrays"]


# --- clipping ----------------------------------------------------------------------------------


@pytest.fixture
def aggregated_updates(monkeypatch):
    """(sent arrays, replies) of every round, as the configured (inner) strategy sees them."""
    seen = []
    configure, aggregate = strategies.KeepDtypes.configure_train, strategies.KeepDtypes.aggregate_train

    def configure_spy(self, server_round, arrays, config, grid):
        seen.append([{k: v.numpy().copy() for k, v in arrays.items()}, []])
        return configure(self, server_round, arrays, config, grid)

    def aggregate_spy(self, server_round, replies):
        replies = list(replies)
        seen[-1][1] = [{k: v.numpy().copy() for k, v in r.content["arrays"].items()} for r in replies]
        return aggregate(self, server_round, replies)

    monkeypatch.setattr(strategies.KeepDtypes, "configure_train", configure_spy)
    monkeypatch.setattr(strategies.KeepDtypes, "aggregate_train", aggregate_spy)
    return seen


@pytest.mark.parametrize("mode", ["central_dp", "client_clip_dp"])
def test_every_clipped_update_is_within_the_clipping_norm(tmp_path, aggregated_updates, mode):
    clip = 0.05  # well below the raw update norms, so clipping really happens
    run(compose(TINY + [f"privacy={mode}", f"privacy.clipping_norm={clip}"]), tmp_path)
    norms = []
    for sent, replies in aggregated_updates:
        assert len(replies) == 6
        for reply in replies:
            norms.append(math.sqrt(sum(float(np.sum((reply[k].astype(np.float64) - sent[k]) ** 2)) for k in sent)))
    assert len(norms) == 2 * 6
    assert max(norms) <= clip * (1 + 1e-4)
    assert min(norms) >= clip * 0.99  # every raw update was larger: each one was scaled down to the bound


def test_without_privacy_the_updates_are_not_clipped(tmp_path, aggregated_updates):
    run(compose(TINY), tmp_path)
    norms = [math.sqrt(sum(float(np.sum((r[k] - sent[k]) ** 2)) for k in sent))
             for sent, replies in aggregated_updates for r in replies]
    assert min(norms) > 0.05  # so the bound above is a real constraint


def chain(mods):
    """The client mods as one mod, in the order the train handler runs them."""
    return lambda msg, ctx, handler: make_ffn(handler, list(mods))(msg, ctx)


def test_local_dp_clips_before_it_adds_noise(identity):
    cfg = compose(TINY + ["privacy=local_dp", "privacy.clipping_norm=0.5", "privacy.epsilon=1e9"])
    mod = chain(client_mods(cfg))  # clip and noise (epsilon huge = no noise to speak of)
    sent = np.zeros(1000, np.float32)
    updated = np.full(1000, 3.0, np.float32)
    out = _through(mod, sent, updated)
    assert np.linalg.norm(out) == pytest.approx(0.5, rel=1e-4)


# --- noise ---------------------------------------------------------------------------------------


class _Grid:
    def __init__(self, n):
        self.n = n

    def get_node_ids(self):
        return list(range(1000, 1000 + self.n))


def _through(mod, sent: np.ndarray, updated: np.ndarray, config: dict | None = None) -> np.ndarray:
    """What a client mod makes of a reply whose update is `updated - sent`."""
    msg = Message(RecordDict({"arrays": ArrayRecord({"w": Array(sent)}), "config": ConfigRecord(config or {})}),
                  dst_node_id=1000, message_type="train")

    def handler(m, ctx):
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(updated.copy())}),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

    return mod(msg, None, handler).content["arrays"]["w"].numpy()


@pytest.mark.parametrize("mode", ["central_dp", "client_clip_dp"])
def test_server_noise_has_std_z_times_clip_over_m(identity, mode):
    z, clip, m = 1.3, 0.7, 6
    cfg = compose(TINY + [f"privacy={mode}", f"privacy.noise_multiplier={z}", f"privacy.clipping_norm={clip}"])
    privacy = ServerPrivacy(cfg, build_strategy(cfg))  # the noise comes from the OS CSPRNG
    current = ArrayRecord({"w": Array(np.zeros(200_000, np.float32))})
    msgs = list(privacy.strategy.configure_train(1, current, ConfigRecord({}), _Grid(m)))
    update = np.zeros(200_000, np.float32)
    update[0] = 0.01  # (Flower's clipping divides by the norm: an all-zero update would fail)
    replies = [Message(RecordDict({"arrays": ArrayRecord({"w": Array(update.copy())}),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg) for msg in msgs]
    agg, _ = privacy.strategy.aggregate_train(1, replies)
    noise = agg["w"].numpy()[1:].astype(np.float64)  # every other coordinate's update is 0: noise only
    assert abs(noise.mean()) < 4 * z * clip / m / math.sqrt(noise.size)
    assert noise.std() == pytest.approx(z * clip / m, rel=0.01)  # sd of the estimate: 0.16%


def test_local_dp_noise_has_the_gaussian_mechanism_std_for_sensitivity_2c(identity):
    """Any two clipped updates differ by up to 2C, so the noise is scaled to 2C; the
    accountant's multiplier is the std over 2C."""
    cfg = compose(TINY + ["privacy=local_dp", "privacy.clipping_norm=2.0", "privacy.epsilon=4.0",
                          "privacy.delta=1e-6"])
    mod = chain(client_mods(cfg))
    zeros, update = np.zeros(200_000, np.float32), np.zeros(200_000, np.float32)
    update[0] = 0.01  # (Flower's clipping divides by the norm: an all-zero update would fail)
    noise = _through(mod, zeros, update)[1:].astype(np.float64)
    expected = 2 * 2.0 * math.sqrt(2 * math.log(1.25 / 1e-6)) / 4.0
    assert noise.std() == pytest.approx(expected, rel=0.01)
    assert local_dp_multiplier(cfg["privacy"]) * 2 * 2.0 == pytest.approx(expected)


def test_local_dp_reply_says_nothing_but_weight_1(identity):
    """The example count and the losses are functions of the client's data no noise covers."""
    cfg = compose(TINY + ["privacy=local_dp"])
    msg = Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(10, np.float32))}),
                              "config": ConfigRecord({})}), dst_node_id=1000, message_type="train")

    def handler(m, ctx):
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.ones(10, np.float32))}),
                                   "metrics": MetricRecord({"num-examples": 57, "loss.rating": 0.9})}), reply_to=m)

    reply = chain(client_mods(cfg))(msg, None, handler)
    assert dict(reply.content["metrics"]) == {"num-examples": 1.0}


def test_distributed_noise_sums_to_the_central_std(identity):
    cfg = compose(TINY + ["privacy=secagg_dp", "privacy.noise_multiplier=0.9", "privacy.clipping_norm=0.4"])
    std = distributed_noise_std(cfg, 0.9)
    zeros = np.zeros(100_000, np.float32)
    shares = [_through(GaussianNoiseMod(std), zeros, zeros).astype(np.float64) for _ in range(6)]
    mean = np.mean(shares, axis=0)  # what the SecAgg+ mean of six clients holds
    assert shares[0].std() == pytest.approx(0.9 * 0.4 / math.sqrt(6), rel=0.01)
    assert mean.std() == pytest.approx(0.9 * 0.4 / 6, rel=0.01)  # = central DP's z*C/m


# --- accounting ----------------------------------------------------------------------------------


def _exact_gaussian_epsilon(delta: float, mu: float) -> float:
    """Balle & Wang (ICML 2018), Thm 8: the exact (epsilon, delta) curve of a Gaussian
    mechanism with mu = sensitivity/std; T compositions have mu = sqrt(T)/z."""
    lo, hi = 0.0, 200.0
    for _ in range(200):
        mid = (lo + hi) / 2
        d = norm.cdf(-mid / mu + mu / 2) - math.exp(mid) * norm.cdf(-mid / mu - mu / 2)
        lo, hi = (mid, hi) if d > delta else (lo, mid)
    return hi


@pytest.mark.parametrize("z, rounds", [(1.0, 10), (2.0, 50), (5.0, 100), (0.8, 1), (4.28, 45)])
def test_full_participation_epsilon_is_the_exact_gaussian_and_below_rdp(z, rounds):
    """Every client in every round: the ledger reports the exact epsilon of the composed
    Gaussian mechanisms (no slack), which the privacy-loss-distribution accountant of
    dp-accounting (a numerical upper bound) confirms from above, and RDP over-reports."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                   SamplingMethod)

    ledger = Ledger(population=100, sample=100, delta=1e-5)
    exact = _exact_gaussian_epsilon(1e-5, math.sqrt(rounds) / z)
    eps = ledger.epsilon_after(z, rounds)
    assert eps == pytest.approx(exact, rel=1e-9)
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_event.GaussianDpEvent(z), rounds)
    assert eps <= pld.get_epsilon(1e-5) <= eps * 1.01 + 1e-3
    rdp = RdpAccountant(PrivacyConfig(1e-5, 100, NeighboringRelation.ADD_OR_REMOVE_ONE,
                                      SamplingMethod.NO_AMPLIFICATION))
    rdp.compose(GaussianPrivacyEvent(z, 100, 100), count=rounds)
    assert eps < rdp.get_epsilon(1e-5)


def test_releases_of_different_multipliers_compose_as_one_gaussian():
    """A DP Gram at z 2 then 10 rounds at z 4 (and secagg_dp's lower multiplier when clients
    drop): mu^2 adds up, and the ledger's epsilon is the exact one of the sum, also across
    the one-at-a-time path the server takes (spend, would_exceed)."""
    ledger = Ledger(population=50, sample=50, delta=1e-5)
    ledger.spend(2.0, everyone=True)
    for _ in range(10):
        ledger.spend(4.0)
    ledger.spend(3.5)
    mu = math.sqrt(1 / 2.0 ** 2 + 10 / 4.0 ** 2 + 1 / 3.5 ** 2)
    assert ledger.epsilon() == pytest.approx(_exact_gaussian_epsilon(1e-5, mu), rel=1e-9)
    assert ledger.releases == 12
    after = _exact_gaussian_epsilon(1e-5, math.sqrt(mu ** 2 + 1 / 4.0 ** 2))
    assert ledger.would_exceed(4.0, after * 0.999) and not ledger.would_exceed(4.0, after * 1.001)


def test_rdp_accountant_beats_abadi_et_al_published_moments_accountant_value():
    """Abadi et al. (CCS 2016), Sec. 3.1: q=0.01, sigma=4, T=10000, delta=1e-5 gives
    epsilon ~= 1.26 with the moments accountant; RDP (Mironov 2017) is at least as tight,
    and no tighter than the near-exact privacy-loss-distribution accountant."""
    from dp_accounting import dp_event
    from dp_accounting.pld import pld_privacy_accountant
    from flwr.serverapp import RdpAccountant
    from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                                   SamplingMethod)

    acc = RdpAccountant(PrivacyConfig(1e-5, 60_000, NeighboringRelation.ADD_OR_REMOVE_ONE, SamplingMethod.POISSON))
    acc.compose(GaussianPrivacyEvent(4.0, 600, 60_000), count=10_000)
    pld = pld_privacy_accountant.PLDAccountant()
    pld.compose(dp_event.PoissonSampledDpEvent(0.01, dp_event.GaussianDpEvent(4.0)), 10_000)
    assert pld.get_epsilon(1e-5) <= acc.get_epsilon(1e-5) <= 1.26


def test_sampling_a_subset_amplifies_privacy():
    full = Ledger(population=943, sample=943, delta=1e-5).epsilon_after(1.0, 20)
    sampled = Ledger(population=943, sample=50, delta=1e-5).epsilon_after(1.0, 20)
    # replace-one neighbours (Flower samples a fixed-size subset) halve the multiplier, so the
    # gain is modest at z=1: 15.5 against 30.1.
    assert sampled < 0.6 * full


def test_calibration_picks_the_noise_that_just_meets_the_target():
    ledger = Ledger(population=6, sample=6, delta=1e-5)
    z = calibrate_noise(ledger, 3.0, 20)
    assert ledger.epsilon_after(z, 20) <= 3.0 < ledger.epsilon_after(z * 0.99, 20)


def test_metrics_jsonl_reports_the_epsilon_spent_after_every_round(tmp_path):
    run(compose(TINY + ["num_rounds=3", "privacy=central_dp", "privacy.noise_multiplier=1.5"]), tmp_path)
    ledger = Ledger(population=6, sample=6, delta=1e-5)
    lines = rows(tmp_path)
    assert [r["privacy"]["releases"] for r in lines] == [1, 2, 3]
    for k, r in enumerate(lines, start=1):
        assert r["privacy"]["epsilon"] == pytest.approx(ledger.epsilon_after(1.5, k))
    assert lines[0]["privacy"]["epsilon"] < lines[1]["privacy"]["epsilon"] < lines[2]["privacy"]["epsilon"]


# --- the budget ----------------------------------------------------------------------------------


def test_target_epsilon_stops_before_the_round_that_would_exceed_it_and_keeps_the_last_model(tmp_path):
    # z=1, 6 of 6 clients: epsilon 4.38 after one round, 6.57 after two (exact).
    stopped = run(compose(TINY + ["num_rounds=4", "privacy=central_dp", "privacy.target_epsilon=6"]),
                  tmp_path / "stopped")
    lines = rows(tmp_path / "stopped")
    assert len(lines) == 1 and stopped["rounds"] == 1
    assert stopped["privacy"]["epsilon"] <= 6 and "target_epsilon=6" in stopped["privacy"]["stopped"]
    assert "rating.rmse" in stopped["metrics"]
    assert stopped["metrics"] == pytest.approx(lines[0]["test"])  # the evaluated model is round 1's release
    saved = torch.load(tmp_path / "stopped" / "model_shared.pt")
    released = round_arrays(tmp_path / "stopped")  # round 1's aggregate, as checkpointed
    assert saved.keys() == released.keys()
    assert all(np.array_equal(saved[k].numpy(), released[k]) for k in saved)


def test_without_a_noise_multiplier_the_target_picks_it(tmp_path):
    summary = run(compose(TINY + ["num_rounds=3", "privacy=client_clip_dp", "privacy.noise_multiplier=null",
                                  "privacy.target_epsilon=5"]), tmp_path)
    assert summary["rounds"] == 3 and "stopped" not in summary["privacy"]
    assert 4.9 <= summary["privacy"]["epsilon"] <= 5.0


@pytest.mark.parametrize("override, words", [
    (["privacy=central_dp", "strategy=fedmedian"], "strategy=fedmedian"),
    (["privacy=secagg_dp", "exchange=sparse", "privacy.max_rows=0"], "privacy.max_rows=0"),
    (["privacy=client_clip_dp", "exchange=sparse", "privacy.count_share=1.0"], "privacy.count_share=1.0"),
    (["privacy=local_dp", "exchange=sparse"], "exchange=sparse"),
    (["privacy=central_dp", "privacy.noise_multiplier=null"], "target_epsilon"),
    (["privacy=central_dp", "privacy.clipping=median"], "privacy.clipping=median"),
    (["privacy=client_clip_dp", "privacy.clipping_norm=0"], "privacy.clipping_norm=0"),
    (["privacy=secagg", "privacy.num_shares=9"], "privacy.num_shares=9"),
    (["privacy=secagg", "privacy.reconstruction_threshold=5"], "reconstruction_threshold=5"),
    (["privacy=secagg", "num_clients=2000", "privacy.num_shares=0.01"], "overflow"),
])
def test_bad_privacy_settings_are_one_line_config_errors(override, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.").replace("=", "=")) as e:
        compose(TINY + override)
    assert "\n" not in str(e.value)


def test_a_budget_stop_between_evaluations_still_reports_the_last_model_s_metrics(tmp_path):
    summary = run(compose(TINY + ["num_rounds=4", "eval_every=3", "privacy=central_dp",
                                  "privacy.target_epsilon=6"]), tmp_path)
    assert summary["rounds"] == 1 and "test" not in rows(tmp_path)[0]
    assert "rating.rmse" in summary["metrics"]


@pytest.mark.parametrize("mode", ["central_dp", "client_clip_dp"])
@pytest.mark.parametrize("start, grows", [(0.001, True), (100.0, False)])
def test_adaptive_clipping_moves_the_bound_towards_the_update_norms(tmp_path, mode, start, grows):
    run(compose(TINY + ["num_rounds=3", f"privacy={mode}", "privacy.clipping=adaptive",
                        "privacy.noise_multiplier=0.5", f"privacy.clipping_norm={start}"]), tmp_path)
    bounds = [start] + [r["privacy"]["clipping_norm"] for r in rows(tmp_path)]
    steps = np.diff(bounds)
    assert (steps > 0).all() if grows else (steps < 0).all()  # every update clipped: grow; none: shrink


def test_the_privacy_state_round_trips_for_a_resumed_run(tmp_path):
    cfg = compose(TINY + ["privacy=central_dp", "privacy.clipping=adaptive", "privacy.noise_multiplier=0.5"])
    first = ServerPrivacy(cfg, build_strategy(cfg))
    first.after_round(1, True, 6)
    first.after_round(2, True, 6)
    first.strategy.clipping_norm = 0.42
    state = json.loads(json.dumps(first.state_dict()))  # it must survive a JSON file
    again = ServerPrivacy(cfg, build_strategy(cfg))
    again.load_state_dict(state)
    assert again.ledger.releases == 2 and again.ledger.epsilon() == pytest.approx(first.ledger.epsilon())
    assert again.strategy.clipping_norm == 0.42


def test_a_checkpoint_with_an_rdp_ledger_resumes_with_the_exact_accounting(tmp_path):
    """A run checkpointed before the exact accountant (its ledger the RDP accountant's state)
    resumes with the same releases, now accounted exactly, from the multipliers it spent."""
    from flwr.serverapp import RdpAccountant

    cfg = compose(TINY + ["privacy=central_dp", "privacy.noise_multiplier=0.5"])
    old = ServerPrivacy(cfg, build_strategy(cfg))
    rdp = RdpAccountant(old.ledger.config)
    for _ in range(2):
        rdp.compose(old.ledger.event(0.5))
    state = {"ledger": json.loads(json.dumps(rdp.state_dict())), "spent": [0.5, 0.5], "stopped": None}
    again = ServerPrivacy(cfg, build_strategy(cfg))
    again.load_state_dict(state)
    assert again.ledger.releases == 2
    assert again.ledger.epsilon() == pytest.approx(Ledger(6, 6, 1e-5).epsilon_after(0.5, 2), rel=1e-9)
    assert again.ledger.epsilon() < rdp.get_epsilon(1e-5)


def test_fixed_clipping_mod_gives_flowers_arrays_and_errors_bit_for_bit():
    """client_clip_dp's mod is Flower's fixedclipping_mod without its .npy round trips: the same
    clipped arrays to the bit (a clipped and an unclipped reply, a 0-d array among them), a
    request read once while the same Array objects come back, and Flower's error replies."""
    from flwr.clientapp.mod import fixedclipping_mod
    from flwr.clientapp.mod.centraldp_mods import KEY_CLIPPING_NORM

    from fedmtl.federation import client_privacy
    from fedmtl.federation.arrays import record

    rng = np.random.default_rng(0)
    sent = {"a": rng.normal(size=(7, 3)).astype(np.float32), "b": np.full((), 0.5, np.float32),
            "c": rng.normal(size=11).astype(np.float32)}
    sent_record = ArrayRecord({k: Array(np.asarray(v)) for k, v in sent.items()})

    def request():
        return Message(RecordDict({"arrays": sent_record, "config": ConfigRecord({KEY_CLIPPING_NORM: 0.8})}),
                       dst_node_id=1000, message_type="train")

    for scale in (0.01, 10.0):  # under and over the bound
        upd = {k: np.asarray(v + scale * rng.normal(size=np.shape(v)), dtype=np.float32) for k, v in sent.items()}

        def handler(m, ctx, fast=False):
            arrays = record(upd) if fast else ArrayRecord({k: Array(v.copy()) for k, v in upd.items()})
            return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

        want = fixedclipping_mod(request(), None, handler).content["arrays"]
        for fast in (False, True):
            got = client_privacy.fixed_clipping_mod(request(), None, lambda m, c: handler(m, c, fast)).content["arrays"]
            assert list(got.keys()) == list(want.keys())
            for k in want.keys():
                a, b = got[k].numpy(), want[k].numpy()
                assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), k
    assert client_privacy._LAST_SENT[0] == tuple(sent_record.values())  # read once, kept for the next client

    def mismatched(m, ctx):
        return Message(RecordDict({"arrays": ArrayRecord({"x": Array(np.zeros(2, np.float32))}),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

    flower, ours = (mod(request(), None, mismatched) for mod in (fixedclipping_mod, client_privacy.fixed_clipping_mod))
    assert flower.has_error() and ours.has_error() and ours.error.code == flower.error.code
    no_norm = Message(RecordDict({"arrays": sent_record, "config": ConfigRecord({})}), dst_node_id=1000,
                      message_type="train")
    ours = client_privacy.fixed_clipping_mod(no_norm, None, mismatched)
    assert ours.has_error() and ours.error.code == fixedclipping_mod(no_norm, None, mismatched).error.code
