"""fedmtl/federation/resume.py: round checkpoints and resume.

A run interrupted after any round and resumed with `resume=true` ends with the
same metrics.jsonl rows and final metrics as the same run left alone: the
checkpoint carries the global arrays, the strategy's state, the RNGs and every
client's personal state. (The SIGKILL of a real process: tests/test_simulate_resume.py.)
"""

from __future__ import annotations

import json

import pytest

from fedmtl.config import compose
from fedmtl.errors import ConfigError, FedMTLError
from fedmtl.federation import resume as ck
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run

# fraction_train < 1: Flower samples the clients with `random`, so the RNG state matters;
# dwa: a client's task weighting has state of its own.
TINY = ["dataset.n_users=40", "dataset.n_items=30", "dataset.mean_interactions=12", "num_clients=5",
        "num_rounds=4", "local_epochs=1", "save_model=false", "device=cpu", "fraction_train=0.6",
        "weighting=dwa"]


@pytest.fixture
def interrupted(stop_after):
    """interrupted(out, overrides, after_round, where): the run of TINY + overrides stopped as
    conftest's stop_after stops it."""
    return lambda out, overrides, after_round, where="after-save": stop_after(
        compose(TINY + overrides), out, after_round, where)


def rows_without_time(path):
    return [{k: v for k, v in row.items() if k != "seconds"} for row in read_jsonl(path)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Uninterrupted runs, by strategy."""
    cache = {}

    def get(strategy, extra=()):
        key = (strategy, tuple(extra))
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ref-{strategy}")
            cache[key] = (run(compose(TINY + [f"strategy={strategy}", *extra]), out)["metrics"], out)
        return cache[key]
    return get


@pytest.mark.parametrize("strategy", ["fedadam", "fedavgm"])
def test_a_resumed_run_ends_exactly_like_the_uninterrupted_one(tmp_path, monkeypatch, reference, strategy, interrupted):
    ref_metrics, ref_out = reference(strategy)
    interrupted(tmp_path, [f"strategy={strategy}"], after_round=2)
    assert [r["round"] for r in read_jsonl(tmp_path / "metrics.jsonl")] == [1, 2]
    resumed = run(compose(TINY + [f"strategy={strategy}", "resume=true"]), tmp_path)
    assert resumed["metrics"] == pytest.approx(ref_metrics, rel=1e-9, abs=1e-12)
    assert rows_without_time(tmp_path / "metrics.jsonl") == rows_without_time(ref_out / "metrics.jsonl")


def test_what_the_checkpoint_restores_is_each_needed(tmp_path, monkeypatch, reference, interrupted):
    """Leaving out the strategy's moments or the clients' states changes the result: the
    equality above is not an accident of a run that never needed them."""
    ref_metrics, _ = reference("fedadam")
    for part in ("strategy", "clients"):
        out = tmp_path / part
        interrupted(out, ["strategy=fedadam"], after_round=2)
        with monkeypatch.context() as m:
            if part == "strategy":
                m.setattr(ck, "restore_strategy", lambda strategy, state: None)
            else:
                from fedmtl.engine.inprocess import InProcessGrid
                m.setattr(InProcessGrid, "load_client_states", lambda self, folder: None)
            lost = run(compose(TINY + ["strategy=fedadam", "resume=true"]), out)["metrics"]
        assert lost["rating.rmse"] != pytest.approx(ref_metrics["rating.rmse"], abs=1e-6), part


@pytest.mark.parametrize("where", ["before-save", "mid-save"])
def test_a_round_whose_checkpoint_did_not_finish_is_run_again(tmp_path, monkeypatch, reference, where, interrupted):
    ref_metrics, ref_out = reference("fedadam")
    interrupted(tmp_path, ["strategy=fedadam"], after_round=3, where=where)
    # round 3's row is in metrics.jsonl, but the last complete checkpoint is round 2
    assert len(read_jsonl(tmp_path / "metrics.jsonl")) == 3
    assert json.loads((tmp_path / "checkpoint" / "LATEST").read_text())["round"] == 2
    resumed = run(compose(TINY + ["strategy=fedadam", "resume=true"]), tmp_path)
    assert resumed["metrics"] == pytest.approx(ref_metrics, rel=1e-9, abs=1e-12)
    assert rows_without_time(tmp_path / "metrics.jsonl") == rows_without_time(ref_out / "metrics.jsonl")
    assert sorted(p.name for p in (tmp_path / "checkpoint").iterdir() if not p.name.startswith(".")) == \
        ["LATEST", "round_0004"]


@pytest.mark.parametrize("engine", [["backend=cohort"], ["backend=cohort", "backend.state=disk"],
                                    ["backend=inprocess", "backend.state=disk"],
                                    ["backend=inprocess", "backend.workers=2"], ["backend=cohort", "backend.workers=2"]])
def test_resume_restores_client_states_on_disk_and_in_workers(tmp_path, monkeypatch, reference, engine, interrupted):
    ref_metrics, _ = reference("fedavg", engine[:1])
    interrupted(tmp_path, ["strategy=fedavg", *engine], after_round=2)
    resumed = run(compose(TINY + ["strategy=fedavg", "resume=true", *engine]), tmp_path)
    assert resumed["metrics"] == pytest.approx(ref_metrics, rel=1e-6)


def test_checkpoint_every_n_rounds_and_always_the_last(tmp_path, monkeypatch, reference, interrupted):
    ref_metrics, _ = reference("fedavg")
    interrupted(tmp_path, ["strategy=fedavg", "checkpoint_every=2"], after_round=3)
    assert json.loads((tmp_path / "checkpoint" / "LATEST").read_text())["round"] == 2
    resumed = run(compose(TINY + ["strategy=fedavg", "checkpoint_every=2", "resume=true"]), tmp_path)
    assert resumed["metrics"] == pytest.approx(ref_metrics, rel=1e-9)
    assert json.loads((tmp_path / "checkpoint" / "LATEST").read_text())["round"] == 4


def test_resuming_a_finished_run_trains_nothing_and_reports_its_result(tmp_path, reference):
    ref_metrics, ref_out = reference("fedavg")
    before = (ref_out / "metrics.jsonl").read_text()
    again = run(compose(TINY + ["strategy=fedavg", "resume=true"]), ref_out)
    assert again["metrics"] == ref_metrics and again["rounds"] == 4
    assert (ref_out / "metrics.jsonl").read_text() == before


def test_resume_true_in_an_empty_folder_starts_a_new_run(tmp_path):
    summary = run(compose(TINY + ["num_rounds=1", "resume=true"]), tmp_path)
    assert summary["rounds"] == 1 and len(read_jsonl(tmp_path / "metrics.jsonl")) == 1


def test_resumed_config_takes_the_run_folder_s_own_config(tmp_path, reference):
    _, ref_out = reference("fedavg")
    cfg, folder = ck.resumed_config(compose([f"resume={ref_out}"]), tmp_path / "elsewhere")
    stored = json.loads((ref_out / "config.json").read_text())
    assert folder == ref_out and cfg["resume"] is True
    assert cfg["num_clients"] == stored["num_clients"] == 5 and cfg["fraction_train"] == 0.6


def one_line(call) -> str:
    with pytest.raises(FedMTLError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_resume_errors_are_one_line(tmp_path):
    msg = one_line(lambda: ck.resumed_config(compose([f"resume={tmp_path}"]), tmp_path))
    assert "config.json" in msg and str(tmp_path) in msg
    assert "backend=inprocess" in one_line(lambda: compose(["resume=true", "backend=ray"]))
    assert "mode=centralized" in one_line(lambda: compose(["resume=true", "mode=centralized"]))
    assert "resume=3" in one_line(lambda: compose(["resume=3"]))
    assert isinstance(pytest.raises(ConfigError, compose, ["checkpoint_every=-1"]).value, ConfigError)


def test_an_unreadable_checkpoint_is_one_line_naming_it(tmp_path, monkeypatch, interrupted):
    interrupted(tmp_path, ["strategy=fedavg"], after_round=1)
    (tmp_path / "checkpoint" / "round_0001" / "server.pkl").write_bytes(b"not a pickle")
    msg = one_line(lambda: run(compose(TINY + ["strategy=fedavg", "resume=true"]), tmp_path))
    assert "checkpoint" in msg and "unreadable" in msg


def test_a_checkpoint_round_trips_arrays_strategy_history_and_extra_state(tmp_path):
    """Server side alone (an engine without client states, e.g. a deployed grid)."""
    import numpy as np
    from flwr.app import Array, ArrayRecord

    from fedmtl.federation.strategies import build_strategy

    cfg = compose(TINY + ["strategy=fedadam"])
    strategy = build_strategy(cfg)
    strategy.m_t = {"w": np.arange(3.0)}
    arrays = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    history = [{"round": 1, "answered": 3}]
    saver = ck.Checkpointer(tmp_path, cfg, grid=object())
    saver.save(1, arrays, strategy, history, extra={"accountant": {"steps": 7}})
    (tmp_path / "metrics.jsonl").write_text('{"round": 1, "answered": 3}\n{"round": 2, "tor')

    fresh = build_strategy(cfg)
    loader = ck.Checkpointer(tmp_path, cfg, grid=object())
    nxt, back, rows = ck.resume(loader, fresh, tmp_path / "metrics.jsonl")
    assert nxt == 2 and rows == history and loader.extra == {"accountant": {"steps": 7}}
    assert back["w"].numpy().tolist() == [1, 1, 1] and fresh.m_t["w"].tolist() == [0, 1, 2]
    assert (tmp_path / "metrics.jsonl").read_text() == '{"answered": 3, "round": 1}\n'

    from fedmtl.engine.inprocess import InProcessGrid
    with pytest.raises(FedMTLError, match="no client states"):
        ck.Checkpointer(tmp_path, cfg, grid=InProcessGrid(None, 5)).load()
