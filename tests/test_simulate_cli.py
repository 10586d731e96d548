"""`python -m fedmtl.simulate`: the command line a user runs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["dataset.n_users=40", "dataset.n_items=30", "num_clients=4", "num_rounds=2", "device=cpu"]
ROOT = Path(__file__).resolve().parent.parent


def simulate(*overrides: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmtl.simulate", *overrides], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_a_tiny_run_exits_0_and_prints_the_final_table(tmp_path):
    proc = simulate(*TINY, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "final test metrics (federated, 4 clients" in out and str(tmp_path) in out
    table = out[out.index("| task | metric | value |"):].splitlines()
    assert table[1] == "| --- | --- | --- |"
    labels = {tuple(cell.strip() for cell in row.strip("|").split("|")[:2]) for row in table[2:] if row.startswith("|")}
    assert {("rating", "RMSE"), ("like", "AUC"), ("click", "HR@10"), ("click", "NDCG@10")} <= labels
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert f"| rating | RMSE | {summary['metrics']['rating.rmse']:.4f} |" in out
    assert (tmp_path / "metrics.jsonl").read_text().count("\n") == 2


def test_each_flower_log_line_is_printed_once_and_kept_in_the_run_log(tmp_path):
    """Flower's logger has a console handler of its own and also propagates to Hydra's
    handlers: each of its lines came out twice. With verbose=true (Flower's INFO shown) a
    2-round run prints each round's `configure_train` line once, and the run's log has it."""
    proc = simulate(*TINY, "verbose=true", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr
    said = (proc.stdout + proc.stderr).count("configure_train: Sampled 4 nodes")
    assert said == 2, proc.stdout + proc.stderr
    assert sum(p.read_text().count("configure_train: Sampled") for p in tmp_path.glob("*.log")) == 2


def test_a_bad_value_exits_2_with_one_error_line(tmp_path):
    proc = simulate(*TINY, "mode=foo", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedmtl: error: mode=foo")
    assert "final test metrics" not in proc.stdout
    # the run folder says why it stopped (a run left in the background, `python -m fedmtl.report`)
    assert json.loads((tmp_path / "error.json").read_text())["error"] == lines[0].removeprefix("fedmtl: error: ")
    from fedmtl.report.runs import load_run
    run = load_run(tmp_path, tmp_path)
    assert run.status == "failed" and run.reason.startswith("mode=foo")
    # the same folder run again, now valid: its earlier failure is gone
    assert simulate(*TINY, f"hydra.run.dir={tmp_path}").returncode == 0
    assert not (tmp_path / "error.json").exists() and load_run(tmp_path, tmp_path).status == "complete"


def test_an_unknown_config_group_option_exits_2_with_one_error_line(tmp_path):
    proc = simulate(*TINY, "model=unknown", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fedmtl: error: ") and "model" in lines[0]


def test_an_unknown_key_exits_2_with_one_error_line(tmp_path):
    proc = simulate(*TINY, "no_such_key=3", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and "no_such_key" in lines[0], proc.stderr


COUNTING = """
import atexit, json, runpy, sys
import hydra
import fedmtl.config as config
from hydra._internal.config_loader_impl import ConfigLoaderImpl

calls = {"hydra_loads": 0, "compose": 0, "validate": 0}
load, compose, validate = ConfigLoaderImpl.load_configuration, hydra.compose, config.validate

def counted_load(self, *args, **kwargs):
    calls["hydra_loads"] += 1
    return load(self, *args, **kwargs)

def counted_compose(*args, **kwargs):
    calls["compose"] += 1
    return compose(*args, **kwargs)

def counted_validate(cfg):
    calls["validate"] += 1
    return validate(cfg)

ConfigLoaderImpl.load_configuration = counted_load
hydra.compose = counted_compose  # what fedmtl.config.compose and the sweep's check call
config.validate = counted_validate  # simulate binds it at import, after this
atexit.register(lambda: print("CALLS " + json.dumps(calls)))
sys.argv = ["fedmtl.simulate", *sys.argv[1:]]
runpy.run_module("fedmtl.simulate", run_name="__main__")
"""


@pytest.mark.parametrize("resume", [False, True])
def test_a_run_composes_and_validates_its_config_once(tmp_path, resume):
    """fedmtl composes nothing itself (Hydra's launch composes the command) and validates one
    config once. It used to compose and validate in a precheck, then validate again in the
    run, and a resumed run a third time. Hydra 1.3's launch itself loads the config twice
    (once to read the run mode, once to run), which is Hydra's and counted apart."""
    out = tmp_path / "run"
    if resume:
        assert simulate(*TINY, "num_rounds=1", f"hydra.run.dir={out}").returncode == 0
    argv = [*TINY, "num_rounds=2", f"hydra.run.dir={out}"] + ([f"resume={out}"] if resume else [])
    proc = subprocess.run([sys.executable, "-c", COUNTING, *argv], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    # a resumed run keeps its own config (num_rounds=1, finished): it adds no round
    assert (out / "metrics.jsonl").read_text().count("\n") == (1 if resume else 2)
    calls = json.loads(proc.stdout.split("CALLS ")[-1])
    assert calls["compose"] == 0 and calls["validate"] == 1, calls
    assert calls["hydra_loads"] <= 2, calls
