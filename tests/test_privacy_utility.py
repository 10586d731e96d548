"""benchmarks/privacy_utility.py --curve: which runs it starts, how many at a time, what a
failed run does (the runs themselves are `python -m fedmtl.simulate`, replaced here)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from argparse import Namespace
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import privacy_utility  # noqa: E402


def _fake_runs(monkeypatch, fail: set[str]):
    state = {"running": 0, "most": 0, "started": []}
    lock = threading.Lock()

    def run(cmd, cwd=None, stdout=None, **kw):
        folder = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        with lock:
            state["running"] += 1
            state["most"] = max(state["most"], state["running"])
            state["started"].append(folder.name)
        time.sleep(0.05)
        with lock:
            state["running"] -= 1
        if folder.name in fail:
            return subprocess.CompletedProcess(cmd, 1)
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", run)
    return state


def test_the_curve_runs_jobs_at_a_time_and_keeps_finished_runs(tmp_path, monkeypatch):
    state = _fake_runs(monkeypatch, fail=set())
    (tmp_path / "eps_8").mkdir()
    (tmp_path / "eps_8" / "summary.json").write_text("{}")  # finished before: kept, not rerun
    args = Namespace(ml_path="DIR", seed=0, set=[], eps="1,8,inf", out=tmp_path, jobs=2)
    folders = privacy_utility.run_curve(args)
    assert [f.name for f in folders] == ["none", "eps_1", "eps_8", "eps_inf"]
    assert sorted(state["started"]) == ["eps_1", "eps_inf", "none"]
    assert state["most"] == 2


def test_privacy_overrides_reach_the_dp_runs_only(tmp_path, monkeypatch):
    """The reference runs privacy=none, which has no privacy.* keys for Hydra to override."""
    seen = {}

    def run(cmd, cwd=None, stdout=None, **kw):
        folder = Path(next(a for a in cmd if a.startswith("hydra.run.dir=")).split("=", 1)[1])
        seen[folder.name] = cmd
        folder.mkdir(parents=True)
        (folder / "summary.json").write_text("{}")
        return subprocess.CompletedProcess(cmd, 0)

    monkeypatch.setattr(subprocess, "run", run)
    args = Namespace(ml_path="DIR", seed=3, set=["privacy.adam_noise_correction=null", "num_rounds=5"], eps="8",
                     out=tmp_path, jobs=1)
    privacy_utility.run_curve(args)
    assert "privacy.adam_noise_correction=null" in seen["eps_8"] and "num_rounds=5" in seen["eps_8"]
    assert "privacy.adam_noise_correction=null" not in seen["none"]
    assert {"num_rounds=5", "seed=3", "dataset.path=DIR"} <= set(seen["none"])


def test_a_failed_run_of_the_curve_is_named_in_one_line(tmp_path, monkeypatch):
    _fake_runs(monkeypatch, fail={"eps_2"})
    args = Namespace(ml_path="DIR", seed=0, set=[], eps="2,4", out=tmp_path, jobs=1)
    with pytest.raises(SystemExit, match=r"these runs failed, see their simulate.log: eps_2 \(exit 1\)"):
        privacy_utility.run_curve(args)
    assert (tmp_path / "eps_4" / "summary.json").is_file()  # the others still ran
