"""Learning curves of run folders: a metric by round from metrics.jsonl, the rounds to reach a
target, and `python -m fedmtl.transfer curves` (a table, optionally a plot)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import FedMTLError
from ..metrics import HEADLINE
from .tables import fmt


def read_curve(run_dir: str | Path, key: str) -> list[tuple[int, float]]:
    from ..runfiles import read_jsonl
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FedMTLError(f"{run_dir}: no metrics.jsonl (not a run folder?)")
    return [(row["round"], row["test"][key]) for row in read_jsonl(path) if key in row.get("test", {})]


def rounds_to_target(curve: list[tuple[int, float]], target: float, larger_is_better: bool = True) -> int | None:
    """The first round whose metric reaches `target`; None if none does."""
    for rnd, v in curve:
        if v is not None and (v >= target if larger_is_better else v <= target):
            return rnd
    return None


def _larger_is_better(key: str) -> bool:
    for k, larger in HEADLINE.values():
        if k == key:
            return larger
    return not any(s in key for s in ("rmse", "mae", "logloss"))


def curves_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="python -m fedmtl.transfer curves",
                                 description="Learning curves of runs: rounds to a target and final metric")
    ap.add_argument("runs", nargs="+", help="NAME=RUN_DIR")
    ap.add_argument("--key", default="click.ndcg@10")
    ap.add_argument("--target", type=float, required=True)
    ap.add_argument("--plot", help="write a PNG of the curves here")
    a = ap.parse_args(argv)
    larger = _larger_is_better(a.key)
    curves = {}
    for spec in a.runs:
        name, _, path = spec.partition("=")
        if not path:
            raise FedMTLError(f"{spec}: expected NAME=RUN_DIR")
        curves[name] = read_curve(path, a.key)
    print(f"| run | rounds to {a.key} {'>=' if larger else '<='} {a.target} | final {a.key} | best |")
    print("| --- | --- | --- | --- |")
    for name, c in curves.items():
        vals = [v for _, v in c]
        best = (max if larger else min)(vals) if vals else None
        r = rounds_to_target(c, a.target, larger)
        print(f"| {name} | {r if r is not None else 'not reached'} | {fmt(vals[-1] if vals else None)} | {fmt(best)} |")
    if a.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5.5, 3.5))
        for name, c in curves.items():
            ax.plot([r for r, _ in c], [v for _, v in c], marker="o", ms=3, label=name)
        ax.axhline(a.target, color="grey", ls=":", lw=1)
        ax.set_xlabel("round")
        ax.set_ylabel(a.key)
        ax.legend()
        fig.tight_layout()
        Path(a.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(a.plot, dpi=120)
        print(f"plot -> {a.plot}")
