"""Hydra sweeps end to end: `python -m fedmtl.simulate -m ...` and `python -m fedmtl.report`."""

from __future__ import annotations

import csv
import json
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
TINY = ["dataset.n_users=40", "dataset.n_items=30", "num_rounds=2", "device=cpu", "save_model=false"]
PNG = b"\x89PNG\r\n\x1a\n"


def cli(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def run_folders(sweep: Path) -> dict[str, Path]:
    return {p.name: p for p in sweep.iterdir() if (p / ".hydra").is_dir()}


def overrides(run: Path) -> dict[str, str]:
    return dict(o.split("=", 1) for o in yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text()))


def read_csv(path: Path) -> dict[str, dict]:
    with open(path, newline="") as f:
        return {row["configuration"]: row for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """2 x 2 configurations (num_clients x weighting), 2 seeds each: 8 runs."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    proc = cli("fedmtl.simulate", "-m", *TINY, "num_clients=4,5", "weighting=fixed,uncertainty", "seed=0,1",
               f"hydra.sweep.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"-> {out / 'summary.md'}" in proc.stdout
    return out


def test_every_combination_runs_in_its_own_folder(sweep):
    runs = run_folders(sweep)
    assert sorted(runs) == [str(i) for i in range(8)]
    combos = {(o["num_clients"], o["weighting"], o["seed"]) for o in map(overrides, runs.values())}
    assert len(combos) == 8
    for run in runs.values():
        cfg = json.loads((run / "config.json").read_text())
        o = overrides(run)
        assert (cfg["num_clients"], cfg["weighting"]["name"], cfg["seed"]) == (int(o["num_clients"]), o["weighting"],
                                                                               int(o["seed"]))
        assert [json.loads(x)["round"] for x in (run / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_the_summary_has_one_row_per_configuration_with_mean_and_std_over_seeds(sweep):
    by_config: dict[tuple, list[dict]] = {}
    for run in run_folders(sweep).values():
        o = overrides(run)
        by_config.setdefault((o["num_clients"], o["weighting"]), []).append(
            json.loads((run / "summary.json").read_text())["metrics"])
    rows = read_csv(sweep / "summary.csv")
    assert sorted(rows) == sorted(f"num_clients={n} weighting={w}" for n, w in by_config)
    metrics = ["rating.rmse", "rating.mae", "like.auc", "like.logloss", "click.hr@10", "click.ndcg@10",
               "rating.rmse_p90", "click.ndcg@10_p10"]
    for (n, w), finals in by_config.items():
        row = rows[f"num_clients={n} weighting={w}"]
        assert (row["num_clients"], row["weighting"], row["runs"], row["seeds"]) == (n, w, "2", "0 1")
        for m in metrics:
            values = [f[m] for f in finals]
            assert float(row[f"{m}_mean"]) == pytest.approx(statistics.mean(values), abs=1e-12)
            assert float(row[f"{m}_std"]) == pytest.approx(statistics.stdev(values), abs=1e-12)
    # the configurations really differ, so a table that mixed them up would not match
    assert len({rows[k]["rating.rmse_mean"] for k in rows}) == 4
    md = (sweep / "summary.md").read_text()
    for (n, w), finals in by_config.items():
        mean = statistics.mean(f["rating.rmse"] for f in finals)
        line = next(ln for ln in md.splitlines() if ln.startswith(f"| num_clients={n} weighting={w} |"))
        assert f"{mean:.4f} ± " in line and "| 2 (seed 0,1) |" in line


def test_plots_of_each_metric_against_the_round_are_written(sweep):
    for metric in ("rating.rmse", "like.auc", "click.ndcg_at_10"):
        png = sweep / "plots" / f"{metric}.png"
        data = png.read_bytes()
        assert data.startswith(PNG) and len(data) > 5000
        assert f"(plots/{metric}.png)" in (sweep / "summary.md").read_text()


def test_the_report_of_an_interrupted_sweep_names_what_is_missing(sweep, tmp_path):
    cut = tmp_path / "cut"
    shutil.copytree(sweep, cut)
    for name in ("summary.md", "summary.csv"):
        (cut / name).unlink()
    shutil.rmtree(cut / "plots")
    runs = run_folders(cut)
    gone, torn = overrides(runs["1"]), overrides(runs["6"])
    shutil.rmtree(runs["1"])  # never started
    (runs["6"] / "summary.json").unlink()  # killed in round 2, mid-line
    lines = (runs["6"] / "metrics.jsonl").read_text().splitlines()
    (runs["6"] / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1][:40])

    proc = cli("fedmtl.report", str(cut))
    assert proc.returncode == 0, proc.stderr
    label = "num_clients={num_clients} weighting={weighting} seed={seed}"
    assert f"missing: 1 ({label.format(**gone)}): never started" in proc.stdout
    assert f"incomplete: 6 ({label.format(**torn)}): metrics.jsonl ends at round 1 (of 2)" in proc.stdout
    md = (cut / "summary.md").read_text()
    assert "## Runs not in the table" in md
    assert f"- 1 ({label.format(**gone)}): **missing**" in md and f"- 6 ({label.format(**torn)}): **incomplete**" in md

    rows = read_csv(cut / "summary.csv")
    assert len(rows) == 4
    for lost in (gone, torn):
        row = rows[f"num_clients={lost['num_clients']} weighting={lost['weighting']}"]
        assert (row["runs"], row["not_finished"], row["rating.rmse_std"]) == ("1", "1", "")
        twin = dict(lost, seed=str(1 - int(lost["seed"])))
        other_seed = next(r for r in run_folders(cut).values() if overrides(r) == twin)
        final = json.loads((other_seed / "summary.json").read_text())["metrics"]["rating.rmse"]
        assert float(row["rating.rmse_mean"]) == pytest.approx(final, abs=1e-12)
    assert (cut / "plots" / "rating.rmse.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("launcher", [[], ["hydra/launcher=joblib", "hydra.launcher.n_jobs=2"]],
                         ids=["one-process", "joblib"])
def test_a_failing_combination_is_reported_and_the_others_kept(tmp_path, launcher):
    out = tmp_path / "s"
    proc = cli("fedmtl.simulate", "-m", *launcher, *TINY, "num_clients=4", "train.lr=0.01,-1", "seed=0",
               f"hydra.sweep.dir={out}")
    assert proc.returncode == 1
    runs = {overrides(r)["train.lr"]: r for r in run_folders(out).values()}
    good, bad = runs["0.01"], runs["-1"]
    assert json.loads((good / "summary.json").read_text())["metrics"]["rating.rmse"] > 0
    assert json.loads((bad / "error.json").read_text())["error"] == "train.lr=-1: must be > 0"
    assert not (bad / "summary.json").exists()
    assert f"fedmtl: run {bad} failed: train.lr=-1: must be > 0" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert "1 of 2 runs did not finish" in proc.stderr and "train.lr=-1" in proc.stderr
    rows = read_csv(out / "summary.csv")
    assert rows["train.lr=0.01"]["runs"] == "1" and float(rows["train.lr=0.01"]["rating.rmse_mean"]) > 0
    assert rows["train.lr=-1"]["runs"] == "0" and rows["train.lr=-1"]["rating.rmse_mean"] == ""
    assert "**failed**: train.lr=-1: must be > 0" in (out / "summary.md").read_text()


def test_the_report_of_a_folder_without_runs_is_one_error_line(tmp_path):
    proc = cli("fedmtl.report", str(tmp_path))
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == [f"fedmtl: error: {tmp_path}: no run folders under it "
                                        "(a run folder holds config.json or metrics.jsonl)"]


def test_a_sweep_over_presets_takes_the_data_path_and_names_each_failed_run(tmp_path):
    out, data = tmp_path / "s", tmp_path / "no-such-ml-100k"
    proc = cli("fedmtl.simulate", "-m", "experiment=ml100k_federated,ml100k_local", f"dataset.path={data}",
               f"hydra.sweep.dir={out}")
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = {overrides(r)["experiment"]: json.loads((r / "error.json").read_text())["error"]
              for r in run_folders(out).values()}
    assert sorted(errors) == ["ml100k_federated", "ml100k_local"]
    assert all(str(data) in e for e in errors.values()), errors
    md = (out / "summary.md").read_text()
    for i, preset in enumerate(["ml100k_federated", "ml100k_local"]):
        assert f"- {i} (experiment={preset} seed=0): **failed**: {errors[preset]}" in md


def test_a_key_no_run_could_have_stops_the_sweep_before_it_starts_with_one_line(tmp_path):
    out = tmp_path / "s"
    proc = cli("fedmtl.simulate", "-m", *TINY, "no_such_key=1,2", f"hydra.sweep.dir={out}")
    assert proc.returncode == 2
    assert proc.stderr.splitlines() == ["fedmtl: error: Could not override 'no_such_key'. "
                                        "To append to your config use +no_such_key=1"]
    assert not out.exists()
