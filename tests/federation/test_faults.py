"""fedmtl/federation/faults.py: injected client drops and stragglers.

A dropped or late client costs its update for that round, never the run; every
round's metrics.jsonl row counts exactly the failures the seeded plan injected;
a round with fewer answers than min_train_clients is skipped with its reason.
"""

from __future__ import annotations

import logging

import pytest

from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.errors import ConfigError
from fedmtl.federation.faults import DROP, LATE, OK, FaultPlan
from fedmtl.metrics import HEADLINE, combine
from fedmtl.results import read_jsonl
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
        assert r["failed_by"] == {"dropped": drops, "error": 0, "late": 0}
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
        assert r["failed_by"] == {"dropped": n_drop, "error": 0, "late": n_late}
        assert r["answered"] == 6 - n_late - n_drop
