"""The README's learning-quality table (issue 11) and learning-curve plot, regenerated.

On MovieLens-100k (per-user 80/20 split of PROTOCOL.md, split seeds 0, 1, 2), on the same
core, model and split: federated multi-task (the default MovieLens recipe), federated
single-task for each task, centralised and local-only; next to PROTOCOL.md's tuned peers.
Every run is a `python -m fedmtl.simulate` subprocess with its own run folder under OUT,
so an interrupted table resumes where it stopped (finished runs are kept).

    python benchmarks/quality.py --ml-path DIR/ml-100k --out results/quality
    python benchmarks/quality.py --ml-path DIR/ml-100k --out results/quality --seeds 0  # one seed

Writes OUT/table.md (mean +- sample std over the seeds, the runs' wall time) and
OUT/learning_curve.png: each task's validation metric per round of the federated recipe
(split.validation=true: a per-user carve of train, never test; the run that chose the
number of rounds). Hyper-parameters were chosen on that carve with
`python -m fedmtl.report SWEEP --select` (docs/quality.md).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

FED = "ml100k_federated"
ROWS = [  # (name, label, overrides)
    ("fed_mtl", "federated multi-task (fedmtl default recipe: exchange=sparse, click blended with federated EASE)",
     [f"experiment={FED}"]),
    ("fed_mtl_head", "federated multi-task, the click head alone (the same recipe with click_mix.weight=0)",
     [f"experiment={FED}", "click_mix.weight=0"]),
    ("fed_mtl_dense", "federated multi-task, exchange=dense (the whole model uploaded, FedAvg of every row)",
     [f"experiment={FED}", "exchange=dense"]),
    ("fed_rating", "federated single-task: rating", [f"experiment={FED}", "tasks=[rating]"]),
    ("fed_like", "federated single-task: like", [f"experiment={FED}", "tasks=[like]"]),
    ("fed_click", "federated single-task: click", [f"experiment={FED}", "tasks=[click]"]),
    ("central", "centralised multi-task (same core and click blend, data pooled)", ["experiment=ml100k_centralized"]),
    ("local", "local-only multi-task (no sharing)", ["experiment=ml100k_local"]),
]
METRICS = [("rating.rmse", "RMSE", "<=", 0.908), ("like.auc", "like AUC", ">=", 0.797),
           ("click.hr@10", "HR@10", ">=", 0.942), ("click.ndcg@10", "NDCG@10", ">=", 0.448)]
PEERS = "tuned peers (PROTOCOL.md, mean of seeds 0-2): SVD++ / ALS"


def run_one(folder: Path, overrides: list[str], ml_path: str, extra: list[str]) -> dict:
    summary = folder / "summary.json"
    if summary.exists():
        return json.loads(summary.read_text())
    cmd = [sys.executable, "-m", "fedmtl.simulate", *overrides, f"dataset.path={ml_path}", *extra,
           f"hydra.run.dir={folder}"]
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.time()
    proc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0 or not summary.exists():
        tail = (proc.stderr or "").strip().splitlines()[-1:] or ["(no message)"]
        raise SystemExit(f"quality: run {folder} failed (exit {proc.returncode}): {tail[0]}")
    print(f"  done in {time.time() - t0:.0f}s", flush=True)
    return json.loads(summary.read_text())


def mean_std(vals: list[float]) -> tuple[float, float | None]:
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, None
    return m, math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))


def cell(vals: list[float]) -> str:
    if not vals:
        return "-"
    m, s = mean_std(vals)
    return f"{m:.4f}" + ("" if s is None else f" ± {s:.4f}")


def table(results: dict[str, list[dict]], seeds: list[int]) -> str:
    head = ["system"] + [f"{label} ({op} {target})" for _, label, op, target in METRICS] + ["wall time / run"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, label, _ in ROWS:
        runs = results.get(name, [])
        cells = [cell([r["metrics"][k] for r in runs if k in r["metrics"]]) for k, *_ in METRICS]
        wall = f"{sum(r['wall_seconds'] for r in runs) / len(runs):.0f} s" if runs else "-"
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {wall} |")
    lines.append(f"| {PEERS} | 0.908 ± 0.003 | 0.797 | 0.942 ± 0.003 | 0.448 ± 0.002 | - |")
    fed = results.get("fed_mtl", [])
    verdict = []
    for k, label, op, target in METRICS:
        vals = [r["metrics"][k] for r in fed if k in r["metrics"]]
        if not vals:
            continue
        m = mean_std(vals)[0]
        met = m <= target if op == "<=" else m >= target
        gap = (m - target) if op == "<=" else (target - m)
        verdict.append(f"- {label}: {m:.4f} vs target {op} {target}: "
                       + ("**met**" if met else f"missed by {gap:.4f}"))
    return "\n".join(lines) + f"\n\nSplit seeds {', '.join(map(str, seeds))}; mean ± sample std.\n\n" \
        + "Federated multi-task against the targets of issue 11:\n\n" + "\n".join(verdict) + "\n"


def learning_curve(run_dir: Path, out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    rows = [r for r in rows if "test" in r]
    cfg = json.loads((run_dir / "config.json").read_text())
    k_avg = int(cfg.get("average_last") or 0)
    fig, axes = plt.subplots(1, len(METRICS), figsize=(4 * len(METRICS), 3.6))
    for ax, (k, label, op, target) in zip(axes, METRICS):
        xs = [r["round"] for r in rows if k in r["test"]]
        ax.plot(xs, [r["test"][k] for r in rows if k in r["test"]], marker="o", markersize=3,
                label="fedmtl default recipe (validation)")
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="tuned centralised peer (test)")
        if k_avg:
            ax.axvline(cfg["num_rounds"] - k_avg + 0.5, color="tab:green", linestyle=":", linewidth=1,
                       label=f"from here on: the mean of the last rounds' models (average_last={k_avg})")
        ax.set_title(f"{label} (validation; peer {op} {target})", fontsize=10)
        ax.set_xlabel("round")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle("fedmtl on MovieLens-100k, 943 clients: validation metrics per round (split seed 0; "
                 "validation HR/NDCG run lower than test: fewer held-out items per user)", fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ml-path", required=True, help="the ml-100k folder (u.data, u.user, u.item)")
    ap.add_argument("--out", default="results/quality", help="run folders, table.md, learning_curve.png")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--rows", nargs="+", default=[r[0] for r in ROWS], choices=[r[0] for r in ROWS])
    ap.add_argument("--engine", default="cohort", choices=["cohort", "inprocess"],
                    help="backend of the federated runs (the README table before 2026-12-05: inprocess, 2 workers)")
    ap.add_argument("--workers", type=int, default=2, help="backend.workers of the federated runs (inprocess)")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    curve_dir = out / "validation_curve"
    engine = ([f"backend={args.engine}"] + ([f"backend.workers={args.workers}"] if args.engine == "inprocess" else []))
    run_one(curve_dir, [f"experiment={FED}", "split.validation=true", "seed=0", "eval_every=1"], args.ml_path, engine)
    learning_curve(curve_dir, out / "learning_curve.png")
    for name, _, overrides in ROWS:
        if name not in args.rows:
            continue
        extra = engine if name.startswith("fed") else []
        results[name] = [run_one(out / name / f"seed{s}", [*overrides, f"seed={s}"], args.ml_path, extra)
                         for s in args.seeds]
        (out / "table.md").write_text(table(results, args.seeds))
    print((out / "table.md").read_text())
    print(f"-> {out / 'table.md'}, {out / 'learning_curve.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
