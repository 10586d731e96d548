"""`python -m fedmtl.simulate` killed mid-run: SIGKILL after round 2 of 4, then
`resume=RUN_FOLDER`, ends with the uninterrupted run's final metrics; Ctrl-C
(SIGINT) stops with one line, exit 130, and every finished round kept."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fedmtl.config import compose
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run

ROOT = Path(__file__).resolve().parent.parent
# Big enough that a round takes a visible moment, so the test can stop the run inside round 3.
RUN = ["dataset.n_users=120", "dataset.n_items=60", "num_clients=12", "num_rounds=4", "local_epochs=2",
       "device=cpu", "strategy=fedadam", "fraction_train=0.75", "weighting=dwa", "faults.drop_rate=0.2",
       "average_last=3", "server_lr.schedule=cosine", "server_lr.final=0.1"]  # their state must survive too


def _default_sigint() -> None:
    # A child inherits an *ignored* SIGINT (a shell starts background jobs, such as a CI run
    # launched with `&`, with SIGINT ignored), and Python then never raises KeyboardInterrupt:
    # the run would finish with exit 0 however often it is interrupted. Ctrl-C at a terminal
    # reaches a process with the default disposition, so the child gets that.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def start(*args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "fedmtl.simulate", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_default_sigint)


def checkpointed_round(folder: Path) -> int:
    try:
        return json.loads((folder / "checkpoint" / "LATEST").read_text())["round"]
    except (OSError, ValueError):
        return 0


def stop_after_round(proc: subprocess.Popen, folder: Path, rnd: int, sig: int) -> None:
    deadline = time.time() + 120
    while checkpointed_round(folder) < rnd:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the run did not reach its round in time"
        time.sleep(0.005)
    assert proc.poll() is None, "the run ended before the test could stop it"
    proc.send_signal(sig)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("whole")
    return run(compose(RUN), out), out


def test_sigkill_after_round_2_of_4_then_resume_matches_the_uninterrupted_run(tmp_path, uninterrupted):
    reference, ref_out = uninterrupted
    folder = tmp_path / "run"
    proc = start(*RUN, f"hydra.run.dir={folder}")
    stop_after_round(proc, folder, 2, signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    killed_rows = read_jsonl(folder / "metrics.jsonl")
    assert 2 <= len(killed_rows) < 4 and not (folder / "summary.json").exists()

    resumed = subprocess.run([sys.executable, "-m", "fedmtl.simulate", f"resume={folder}",
                              f"hydra.run.dir={tmp_path / 'hydra'}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=300, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)
    rows = read_jsonl(folder / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2, 3, 4]
    strip = lambda rs: [{k: v for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(rows) == strip(read_jsonl(ref_out / "metrics.jsonl"))
    assert f"{summary['metrics']['rating.rmse']:.4f}" in resumed.stdout


def test_ctrl_c_stops_with_one_line_keeping_finished_rounds(tmp_path, uninterrupted):
    reference, _ = uninterrupted
    folder = tmp_path / "run"
    proc = start(*RUN, f"hydra.run.dir={folder}")
    stop_after_round(proc, folder, 1, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fedmtl: interrupted;"), err
    assert f"resume={folder}" in lines[0]
    rows = read_jsonl(folder / "metrics.jsonl")
    assert len(rows) == checkpointed_round(folder) >= 1
    assert (folder / "metrics.jsonl").read_text().endswith("\n")
    # ... and the run continues from there to the same end
    resumed = run(compose(RUN + ["resume=true"]), folder)
    assert resumed["metrics"] == pytest.approx(reference["metrics"], rel=1e-6)
