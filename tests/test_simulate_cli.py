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


def test_a_bad_value_exits_2_with_one_error_line(tmp_path):
    proc = simulate(*TINY, "mode=foo", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fedmtl: error: mode=foo")
    assert "final test metrics" not in proc.stdout


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
