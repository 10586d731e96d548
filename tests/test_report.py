"""fedmtl/report/ on run folders written by hand: how runs are grouped and named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from fedmtl.config import compose
from fedmtl.report.cli import main
from fedmtl.report.selection import select
from fedmtl.report.summary import write_report


def make_run(folder: Path, overrides: list[str] | None, rmse: list[float]) -> None:
    """A finished run: config.json from conf/ with `overrides`, one metrics.jsonl line per
    round (or epoch) with its test RMSE, summary.json with the last."""
    cfg = compose(overrides or [])
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    if overrides is not None:
        (folder / ".hydra").mkdir()
        (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    lines = [json.dumps({"round": i + 1, "test": {"rating.rmse": v, "clients": 3}}) for i, v in enumerate(rmse)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    (folder / "summary.json").write_text(json.dumps({"metrics": {"rating.rmse": rmse[-1], "clients": 3},
                                                     "wall_seconds": 1.0}))


def test_a_key_left_at_its_default_in_one_run_is_named_with_its_value(tmp_path):
    make_run(tmp_path / "a", ["num_rounds=2"], [1.2, 1.1])
    make_run(tmp_path / "b", ["mode=centralized", "num_rounds=2", "baseline_epochs=3"], [1.0, 0.95, 0.9])
    rep = write_report(tmp_path, plots=False)
    assert [g.label for g in rep.groups] == ["mode=federated baseline_epochs=null",
                                             "mode=centralized baseline_epochs=3"]
    assert [rep.stats(g, "rating.rmse")[0] for g in rep.groups] == [1.1, 0.9]
    assert all(r.status == "complete" for r in rep.runs)


def test_a_run_short_of_its_epochs_is_incomplete_even_with_a_summary(tmp_path):
    make_run(tmp_path / "a", ["mode=centralized", "baseline_epochs=3"], [1.0, 0.95])
    rep = write_report(tmp_path, plots=False)
    assert (rep.runs[0].status, rep.runs[0].reason) == ("incomplete", "metrics.jsonl ends at round 2 (of 3)")
    assert rep.stats(rep.groups[0], "rating.rmse") == (None, None)


def test_runs_without_hydra_files_are_grouped_by_their_configs_seeds_pooled(tmp_path):
    for i, (clients, seed, rmse) in enumerate([(4, 0, 1.0), (4, 1, 1.2), (8, 0, 0.9), (8, 1, 0.8)]):
        make_run(tmp_path / f"r{i}", None, [rmse])
        cfg = json.loads((tmp_path / f"r{i}" / "config.json").read_text())
        cfg.update(num_clients=clients, seed=seed, num_rounds=1)
        cfg["split"]["seed"] = seed  # as validate() derives it
        (tmp_path / f"r{i}" / "config.json").write_text(json.dumps(cfg))
    rep = write_report(tmp_path, plots=False)
    assert [g.label for g in rep.groups] == ["num_clients=4", "num_clients=8"]
    assert [[r.seed for r in g.complete] for g in rep.groups] == [["0", "1"], ["0", "1"]]
    (m4, s4), (m8, s8) = (rep.stats(g, "rating.rmse") for g in rep.groups)
    assert (m4, m8) == (pytest.approx(1.1), pytest.approx(0.85))
    assert (s4, s8) == (pytest.approx(0.1414213562), pytest.approx(0.0707106781))
    assert rep.metrics == ["rating.rmse"]  # "clients" is a count, not a metric


def _run_with(folder: Path, overrides: list[str], curves: dict[str, list[float]]) -> None:
    cfg = compose(overrides)
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(cfg))
    (folder / ".hydra").mkdir()
    (folder / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    n = len(next(iter(curves.values())))
    rows = [{"round": r + 1, "test": {m: v[r] for m, v in curves.items()}} for r in range(n)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
    (folder / "summary.json").write_text(json.dumps({"metrics": rows[-1]["test"]}))


def test_select_ranks_configuration_and_round_by_mean_rank_on_validation(tmp_path, capsys):
    v = ["split.validation=true", "num_rounds=3"]
    # a: best at round 2 (then overfits); b: worse everywhere; c: diverged (never a candidate)
    _run_with(tmp_path / "a", [*v, "train.lr=0.1"], {"rating.rmse": [1.0, 0.90, 0.95], "like.auc": [0.7, 0.80, 0.78]})
    _run_with(tmp_path / "b", [*v, "train.lr=0.01"], {"rating.rmse": [1.1, 1.0, 0.97], "like.auc": [0.6, 0.7, 0.75]})
    _run_with(tmp_path / "c", [*v, "train.lr=1.0"], {"rating.rmse": [float("nan")] * 3, "like.auc": [0.5] * 3})
    rep = write_report(tmp_path, plots=False)
    cands = select(rep)
    assert (cands[0]["configuration"], cands[0]["round"]) == ("train.lr=0.1", 2)
    assert cands[0]["ranks"] == {"rating.rmse": 1, "like.auc": 1}
    assert all(c["configuration"] != "train.lr=1.0" for c in cands)
    assert main([str(tmp_path), "--select", "--no-plots"]) == 0
    out = capsys.readouterr()
    assert "selected: train.lr=0.1 at round 2" in out.out and "TEST" not in out.err


def test_select_warns_when_runs_were_scored_on_test(tmp_path, capsys):
    _run_with(tmp_path / "a", ["num_rounds=1"], {"rating.rmse": [1.0]})
    assert main([str(tmp_path), "--select", "--no-plots"]) == 0
    assert "TEST" in capsys.readouterr().err


def test_select_ranks_each_blend_of_a_click_mix_grid_with_ties_sharing_a_rank(tmp_path, capsys):
    v = ["split.validation=true", "num_rounds=2", "click_mix.grid_weight=[0,0.1]", "click_mix.grid_lam=[300]"]
    for seed, (nd_head, nd_w0, nd_w01) in enumerate([(0.20, 0.20, 0.26), (0.22, 0.22, 0.24)]):
        folder = tmp_path / f"s{seed}"
        _run_with(folder, [*v, f"seed={seed}"], {"rating.rmse": [1.0, 0.9], "click.ndcg@10": [0.1, nd_head]})
        rows = [json.loads(x) for x in (folder / "metrics.jsonl").read_text().splitlines()]
        rows[-1]["test"].update({"mix_w0_lam300/click.ndcg@10": nd_w0, "mix_w0.1_lam300/click.ndcg@10": nd_w01})
        (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in rows))
        (folder / "summary.json").write_text(json.dumps({"metrics": rows[-1]["test"]}))
    rep = write_report(tmp_path, plots=False)
    assert "mix_w0.1_lam300/click.ndcg@10" not in rep.headline_table()  # the grid stays out of the table
    cands = select(rep)
    best = cands[0]
    assert (best["configuration"], best["round"]) == ("click_mix.weight=0.1 click_mix.lam=300", 2)
    assert best["values"] == {"rating.rmse": 0.9, "click.ndcg@10": pytest.approx(0.25)}
    assert best["ranks"] == {"rating.rmse": 1, "click.ndcg@10": 1}  # every round-2 candidate ties on RMSE
    tied = [c for c in cands if c["round"] == 2 and c is not best]
    assert [c["ranks"]["click.ndcg@10"] for c in tied] == [2, 2]  # the head and w 0: the same ranking
    assert main([str(tmp_path), "--select", "--no-plots", "--by", "click.ndcg@10"]) == 0
    assert "selected: click_mix.weight=0.1 click_mix.lam=300 at round 2" in capsys.readouterr().out
    assert main([str(tmp_path), "--select", "--no-plots", "--by", "click.ndcg"]) == 2
    assert "--by click.ndcg: click.ndcg is not a metric of these runs" in capsys.readouterr().err
