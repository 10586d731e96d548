"""on_client_failure in a simulated run: the same round loop as a deployment."""

import json

import pytest

from fedmtl.config import compose
from fedmtl.federation.failures import RoundFailure
from fedmtl.simulate import run

TINY = ["backend=inprocess", "dataset.n_users=40", "dataset.n_items=30", "dataset.mean_interactions=12", "num_clients=4",
        "num_rounds=3", "local_epochs=1", "save_model=false"]


@pytest.fixture
def client_crashes_from_round_2(monkeypatch):
    import fedmtl.federation.client_app as ca

    real = ca._client_data
    calls = {"n": 0}

    def flaky(cfg, context):
        pid = int(context.node_config["partition-id"])
        if pid == 1:
            calls["n"] += 1
            if calls["n"] > 2:  # round 1's train and evaluate go through
                raise RuntimeError("disk on fire")
        return real(cfg, context)

    monkeypatch.setattr(ca, "_client_data", flaky)


def test_stop_ends_the_run_with_one_line_and_keeps_finished_rounds(tmp_path, client_crashes_from_round_2):
    with pytest.raises(RoundFailure, match=r"round 2 train: 1 of 4 node\(s\) failed .*disk on fire.*on_client_failure=stop"):
        run(compose(TINY + ["on_client_failure=stop"]), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1] and rows[0]["failed"] == 0


def test_continue_aggregates_the_rest(tmp_path, client_crashes_from_round_2):
    summary = run(compose(TINY), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["failed"] for r in rows] == [0, 1, 1]
    assert [r["answered"] for r in rows] == [4, 3, 3]
    assert [r["failed_evaluate"] for r in rows] == [0, 1, 1]
    assert summary["rounds"] == 3
