"""fedmtl/federation/faults.py: injected client drops and stragglers.

A dropped or late client costs its update for that round, never the run; every
round's metrics.jsonl row counts exactly the failures the seeded plan injected;
a round with fewer answers than min_train_clients is skipped with its reason.
The same holds on Flower's Ray engine (stragglers get actors of their own) and
under SecAgg+ (privacy=secagg, secagg_dp), whose dropout tolerance still
aggregates the survivors.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.errors import ConfigError
from fedmtl.federation.faults import DROP, LATE, OK, FaultPlan
from fedmtl.metrics import HEADLINE, combine
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run
from fedmtl.train import evaluate

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=10", "num_rounds=4", "local_epochs=1",
        "device=cpu", "save_model=false"]


def initial(cfg: dict) -> dict:
    """What the run's evaluation reports when no update ever arrived: each client's
    initial personal parameters with the server's initial shared ones."""
    from flwr.app import RecordDict

    from fedmtl.federation.client_state import client_model, load_shared
    from fedmtl.federation.server_app import initial_arrays

    fed, shared = federation_for(cfg), initial_arrays(cfg)
    parts = []
    for pid in range(len(fed.clients)):
        data = fed.partition_data(pid)
        model = client_model(cfg, data, RecordDict(), pid)
        load_shared(model, shared)
        parts.append(evaluate(model, data, cfg["tasks"]))
    return combine(parts)


def planned(cfg: dict, rnd: int, fate: str) -> int:
    plan = FaultPlan.from_config(cfg)
    return sum(plan.fate(rnd, pid) == fate for pid in range(cfg["num_clients"]))


# --- the plan ---------------------------------------------------------------------------------


def test_the_plan_injects_the_configured_shares_and_is_seeded():
    plan = FaultPlan(drop_rate=0.3, straggler_rate=0.1, seed=7)
    fates = [plan.fate(r, p) for r in range(1, 51) for p in range(200)]
    assert fates.count(DROP) / len(fates) == pytest.approx(0.3, abs=0.02)
    assert fates.count(LATE) / len(fates) == pytest.approx(0.1, abs=0.02)
    assert fates == [plan.fate(r, p) for r in range(1, 51) for p in range(200)]
    other = FaultPlan(drop_rate=0.3, straggler_rate=0.1, seed=8)
    assert fates != [other.fate(r, p) for r in range(1, 51) for p in range(200)]
    # a client's fate changes from round to round
    assert len({tuple(plan.fate(r, p) for p in range(200)) for r in range(1, 6)}) == 5
    assert {FaultPlan().fate(r, p) for r in range(5) for p in range(5)} == {OK}


@pytest.mark.parametrize("override, key", [
    ("faults.drop_rate=1.5", "faults.drop_rate"), ("faults.straggler_rate=-0.1", "faults.straggler_rate"),
    ("faults.drop_rate=abc", "faults.drop_rate"), ("faults.seed=-1", "faults.seed"),
])
def test_bad_fault_settings_are_one_line_config_errors(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose([override])
    with pytest.raises(ConfigError, match=r"must be <= 1"):
        compose(["faults.drop_rate=0.6", "faults.straggler_rate=0.6"])
    with pytest.raises(ConfigError, match="round_timeout=None: expected a number"):  # rounds are always bounded
        compose(["faults.straggler_rate=0.1", "round_timeout=null"])
    with pytest.raises(ConfigError, match="after round_timeout"):
        compose(["faults.straggler_rate=0.1", "round_timeout=5", "faults.straggler_delay=2"])


# --- drops ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dropped(tmp_path_factory):
    cfg = compose(TINY + ["faults.drop_rate=0.3"])
    out = tmp_path_factory.mktemp("drop")
    return cfg, out, run(cfg, out)


def test_metrics_jsonl_counts_exactly_the_injected_drops(dropped):
    cfg, out, _ = dropped
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    for r in rows:
        drops = planned(cfg, r["round"], DROP)
        assert r["sampled"] == 10
        assert r["failed"] == drops and r["answered"] == 10 - drops
        assert r["failed_by"] == {"dropped": drops, "refused": 0, "error": 0, "invalid": 0, "late": 0}
        assert "skipped" not in r
    assert sum(r["failed"] for r in rows) > 0, "the seeded plan injected no drop: the test would prove nothing"


def test_a_30_percent_drop_rate_still_trains(dropped, untrained_metrics):
    cfg, _, summary = dropped
    before = untrained_metrics(cfg)
    for task in cfg["tasks"]:
        key, larger_is_better = HEADLINE[task]
        after = summary["metrics"][key]
        assert (after > before[key]) if larger_is_better else (after < before[key]), key


def test_a_dropped_client_s_upload_is_not_counted(dropped):
    cfg, out, _ = dropped
    rows = read_jsonl(out / "metrics.jsonl")
    per_client = {r["bytes_up_per_client"] for r in rows}
    for r in rows:
        assert r["bytes_up"] == r["answered"] * r["bytes_up_per_client"]
    assert len(per_client) == 1


def test_a_round_with_too_few_answers_is_skipped_with_its_reason(tmp_path, caplog):
    overrides = TINY + ["num_clients=4", "min_train_clients=4", "faults.drop_rate=0.3", "num_rounds=3"]
    cfg = compose(overrides)
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    expect_skip = [planned(cfg, r, DROP) > 0 for r in (1, 2, 3)]
    assert any(expect_skip), "no round has a drop under this seed: the test would prove nothing"
    for r, skip in zip(rows, expect_skip):
        if skip:
            assert "fewer than min_train_clients=4" in r["skipped"] and "dropped" in r["skipped"]
            assert r["train"] == {}
            assert f"round {r['round']} skipped: only {r['answered']} of 4 clients answered" in caplog.text
        else:
            assert "skipped" not in r and r["train"]


def test_when_every_client_drops_the_model_stays_untrained_and_the_run_ends(tmp_path):
    cfg = compose(TINY + ["num_rounds=2", "faults.drop_rate=1.0"])
    summary = run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["answered"] for r in rows] == [0, 0] and all("skipped" in r for r in rows)
    before = initial(cfg)
    assert before.keys() == summary["metrics"].keys() - {"clients"}
    for key, value in before.items():
        assert summary["metrics"][key] == pytest.approx(value, abs=1e-6), key


# --- stragglers --------------------------------------------------------------------------------


def test_stragglers_past_the_round_timeout_are_counted_late(tmp_path):
    # The deadline applies to each client's own time; 4 s leaves a normal client
    # (a few hundred ms here) room even on a loaded machine.
    overrides = TINY + ["num_clients=6", "num_rounds=2", "round_timeout=4", "faults.straggler_delay=4.5",
                        "faults.straggler_rate=0.2", "faults.drop_rate=0.2", "faults.seed=2"]
    cfg = compose(overrides)
    late = [planned(cfg, r, LATE) for r in (1, 2)]
    drops = [planned(cfg, r, DROP) for r in (1, 2)]
    assert sum(late) >= 1 and sum(drops) >= 1, "pick a faults.seed with both kinds of fault"
    run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    for r, n_late, n_drop in zip(rows, late, drops):
        assert r["failed_by"] == {"dropped": n_drop, "refused": 0, "error": 0, "invalid": 0, "late": n_late}
        assert r["answered"] == 6 - n_late - n_drop



def test_on_ray_stalled_clients_get_actors_of_their_own(tmp_path, caplog, untrained_metrics):
    """Flower's Ray engine runs every client on a pool of actors (2 on 2 CPUs) and a stalled
    client holds one until it replies; the engine adds one actor per client that can stall, so
    the punctual clients behind them still answer in time and only the stragglers count late."""
    pytest.importorskip("ray")
    # Round 2 of this plan: clients 1 and 2 stall, 3 drops, 0, 4 and 5 are punctual. The pool's
    # two CPU actors take 0 and 1, then 2: without actors of their own the two stalled
    # clients would hold the whole pool past the deadline, and 3, 4 and 5 would be late
    # too (measured: 1 answered, 5 late).
    overrides = TINY + ["num_clients=6", "num_rounds=2", "local_epochs=3", "eval_every=2", "backend=ray",
                        "backend.num_cpus_per_client=1", "round_timeout=20", "faults.straggler_rate=0.2",
                        "faults.drop_rate=0.2", "faults.seed=17"]
    cfg = compose(overrides)
    late = [planned(cfg, r, LATE) for r in (1, 2)]
    drops = [planned(cfg, r, DROP) for r in (1, 2)]
    assert late == [0, 2] and drops == [0, 1]
    with caplog.at_level(logging.INFO, logger="fedmtl"):
        summary = run(cfg, tmp_path)
    assert "plus 2 for clients that stall" in caplog.text
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    for r, n_late, n_drop in zip(rows, late, drops):
        assert r["failed_by"] == {"dropped": n_drop, "refused": 0, "error": 0, "invalid": 0, "late": n_late}
        assert r["answered"] == 6 - n_late - n_drop and "skipped" not in r
    before = untrained_metrics(cfg)
    for task in cfg["tasks"]:
        key, larger_is_better = HEADLINE[task]
        after = summary["metrics"][key]
        assert (after > before[key]) if larger_is_better else (after < before[key]), key


def test_the_ray_pool_grows_by_the_clients_that_can_stall_at_once():
    from fedmtl.engine.ray import _local_cpus, pool_room
    from fedmtl.federation.faults import ray_extra_actors

    base = TINY + ["num_clients=6", "num_rounds=2", "backend=ray", "faults.straggler_rate=0.2",
                   "faults.drop_rate=0.2", "faults.seed=10"]
    assert ray_extra_actors(compose(base + ["round_timeout=20"])) == 2  # rounds with 0 and 2 stragglers
    # a straggler of round 1 may still stall in round 3 when the delay spans two timeouts
    cfg = compose(base + ["num_rounds=6", "round_timeout=5", "faults.straggler_delay=11"])
    per_round = sorted((planned(cfg, r, LATE) for r in range(1, 7)), reverse=True)
    assert ray_extra_actors(cfg) == sum(per_round[:3]) > sum(per_round[:2])
    assert ray_extra_actors(compose(TINY + ["backend=ray"])) == 0
    cpus = _local_cpus()
    args: dict = {}
    pool_room(args, {"num_cpus_per_client": 1}, 3)
    assert args["num_cpus"] == cpus + 3
    pool_room(args, {"num_cpus_per_client": 0.5}, 3)
    assert args["num_cpus"] >= cpus + 1.5 and int(args["num_cpus"] / 0.5) >= int(cpus / 0.5) + 3
    args = {}
    pool_room(args, {"num_cpus_per_client": 1, "address": "auto"}, 3)  # a cluster's pool is its own
    assert args == {}


# --- drops under SecAgg+ (privacy=secagg, secagg_dp) -------------------------------------------

SECAGG = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "local_epochs=1", "device=cpu",
          "save_model=false"]


@pytest.fixture
def secure_rounds(monkeypatch):
    """Each SecAgg+ round's (round, arrays sent, arrays aggregated or None)."""
    from fedmtl.federation.secagg_round import SecAggRound

    seen = []
    original = SecAggRound.__call__

    def recording(self, rnd, arrays, grid):
        out = original(self, rnd, arrays, grid)
        seen.append((rnd, {k: a.numpy().copy() for k, a in arrays.items()},
                     None if out[0] is None else {k: a.numpy().copy() for k, a in out[0].items()}))
        return out

    monkeypatch.setattr(SecAggRound, "__call__", recording)
    return seen


def moved(before: dict, after: dict) -> float:
    return max(float(np.abs(after[k].astype(np.float64) - before[k]).max()) for k in before)


@pytest.mark.parametrize("mode", ["secagg", "secagg_dp"])
def test_secagg_counts_the_injected_drops_and_aggregates_the_survivors(tmp_path, secure_rounds, mode):
    cfg = compose(SECAGG + ["num_rounds=3", f"privacy={mode}", "faults.drop_rate=0.3"])
    run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    drops = [planned(cfg, r, DROP) for r in (1, 2, 3)]
    assert sum(drops) > 0 and min(drops) < max(drops), "the seeded plan must vary the drops"
    for r, n_drop, (rnd, sent, got) in zip(rows, drops, secure_rounds):
        assert r["round"] == rnd
        assert (r["sampled"], r["answered"], r["failed"]) == (6, 6 - n_drop, n_drop)
        assert r["failed_by"] == {"dropped": n_drop, "refused": 0, "error": 0, "invalid": 0, "late": 0}
        # SecAgg+'s dropout tolerance: the survivors' masks came off and the round aggregated
        assert r["secagg"]["aggregated"] and r["secagg"]["unmasked_by"] == 6 - n_drop and "skipped" not in r
        assert got is not None and moved(sent, got) > 1e-3  # the weights really changed
    # each round started from the previous round's aggregate
    for (_, _, got), (_, sent, _) in zip(secure_rounds, secure_rounds[1:]):
        assert all(np.array_equal(got[k], sent[k]) for k in got)
    if mode == "secagg_dp":  # every round released a (noised) sum: three events in the ledger
        assert [r["privacy"]["releases"] for r in rows] == [1, 2, 3]


def test_a_secagg_round_with_drops_is_the_survivors_fedavg(tmp_path, quantisation_bound):
    """The same seeded drops under plain FedAvg and under SecAgg+: the same survivors, so the
    same mean up to SecAgg+'s quantisation."""
    import torch

    one = SECAGG + ["num_rounds=1", "faults.drop_rate=0.3", "save_model=true"]
    cfg = compose(one + ["privacy=secagg"])
    survivors = [pid for pid in range(6) if FaultPlan.from_config(cfg).fate(1, pid) == OK]
    assert 0 < len(survivors) < 6
    run(compose(one), tmp_path / "plain")
    run(cfg, tmp_path / "secure")
    a, b = torch.load(tmp_path / "plain" / "model_shared.pt"), torch.load(tmp_path / "secure" / "model_shared.pt")
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= quantisation_bound(cfg, survivors)
    assert read_jsonl(tmp_path / "secure" / "metrics.jsonl")[0]["answered"] == len(survivors)


def test_secagg_rounds_with_too_few_survivors_are_skipped_with_their_reason(tmp_path, secure_rounds, caplog):
    # faults.seed=0 at 50%: 4, 3 and 2 of 6 clients drop in rounds 1, 2, 3
    cfg = compose(SECAGG + ["num_rounds=3", "privacy=secagg", "faults.drop_rate=0.5", "min_train_clients=3"])
    assert [planned(cfg, r, DROP) for r in (1, 2, 3)] == [4, 3, 2]
    with caplog.at_level(logging.WARNING, logger="fedmtl"):
        run(cfg, tmp_path)
    rows = read_jsonl(tmp_path / "metrics.jsonl")
    assert [r["answered"] for r in rows] == [2, 3, 4]
    # round 1: fewer answers than min_train_clients, as in a plain round
    assert rows[0]["skipped"] == "only 2 of 6 clients answered (4 dropped); fewer than min_train_clients=3"
    # round 2: enough for min_train_clients, too few for SecAgg+ to remove every mask
    assert rows[1]["skipped"].startswith("SecAgg+ halted at its collect_masked_vectors stage: 3 of 6 clients "
                                         "answered (3 dropped); SecAgg+ needs reconstruction_threshold=3")
    for r in rows[:2]:
        assert r["secagg"]["aggregated"] is False and r["train"] == {}
        assert f"round {r['round']} skipped: {r['skipped']}" in caplog.text
    assert "skipped" not in rows[2] and rows[2]["secagg"]["aggregated"]
    # the skipped rounds left the model as it was; round 3 moved it
    (_, s1, g1), (_, s2, g2), (_, s3, g3) = secure_rounds
    assert g1 is None and g2 is None and g3 is not None
    assert all(np.array_equal(s1[k], s2[k]) and np.array_equal(s2[k], s3[k]) for k in s1)
    assert moved(s3, g3) > 1e-3


def test_below_min_train_clients_secagg_stops_before_unmasking(tmp_path):
    """A round short of min_train_clients never asks for the key shares, so the server never
    learns that round's sum (SecAgg+ alone would have unmasked 4 of 6)."""
    cfg = compose(SECAGG + ["num_rounds=2", "privacy=secagg", "faults.drop_rate=0.3", "min_train_clients=5"])
    assert [planned(cfg, r, DROP) for r in (1, 2)] == [1, 2]
    run(cfg, tmp_path)
    first, second = read_jsonl(tmp_path / "metrics.jsonl")
    assert first["secagg"]["aggregated"] and "skipped" not in first
    assert second["skipped"] == "only 4 of 6 clients answered (2 dropped); fewer than min_train_clients=5"
    assert "unmask" not in second["secagg"]["stages"] and second["secagg"]["stages"]["collect_masked_vectors"] == [6, 4]


def test_secagg_counts_stragglers_late_and_aggregates_the_rest(tmp_path, secure_rounds):
    cfg = compose(SECAGG + ["num_rounds=1", "privacy=secagg", "round_timeout=3", "faults.straggler_delay=3.5",
                            "faults.straggler_rate=0.2", "faults.drop_rate=0.2", "faults.seed=4"])
    assert (planned(cfg, 1, LATE), planned(cfg, 1, DROP)) == (1, 1)
    run(cfg, tmp_path)
    (row,) = read_jsonl(tmp_path / "metrics.jsonl")
    assert row["failed_by"] == {"dropped": 1, "refused": 0, "error": 0, "invalid": 0, "late": 1} and row["answered"] == 4
    assert row["secagg"]["aggregated"] and row["secagg"]["unmasked_by"] == 4
    (_, sent, got), = secure_rounds
    assert got is not None and moved(sent, got) > 1e-3
