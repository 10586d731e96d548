"""Privacy-utility table and plot from finished run folders.

    python benchmarks/privacy_utility.py RUN_DIR [RUN_DIR ...] [--plot docs/privacy_utility.png]

Reads each folder's config.json and summary.json (written by `python -m fedmtl.simulate`)
and prints one markdown row per run: the privacy mode, the epsilon spent (delta in the
header), the noise multiplier, the rounds run and the final per-task test metrics. With
--plot, draws each task's headline metric against epsilon (runs without noise as horizontal lines).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

COLUMNS = [("rating.rmse", "RMSE"), ("like.auc", "like AUC"), ("click.hr@10", "HR@10"),
           ("click.ndcg@10", "NDCG@10")]


def load(run_dir: Path) -> dict:
    cfg = json.loads((run_dir / "config.json").read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    p = summary.get("privacy", {"mode": cfg["privacy"]["name"]})
    return {"name": run_dir.name, "mode": p["mode"], "epsilon": p.get("epsilon"), "delta": p.get("delta"),
            "z": p.get("noise_multiplier"), "clip": cfg["privacy"].get("clipping_norm"),
            "rounds": summary["rounds"], "seconds": summary.get("seconds"), "metrics": summary["metrics"]}


def table(runs: list[dict]) -> str:
    head = "| run | privacy | epsilon | z | C | rounds | " + " | ".join(c for _, c in COLUMNS) + " | seconds |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in runs:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        z = "-" if r["z"] is None else f"{r['z']:.3f}"
        clip = "-" if r["clip"] is None else f"{r['clip']:g}"
        vals = " | ".join(f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "-" for k, _ in COLUMNS)
        lines.append(f"| {r['name']} | {r['mode']} | {eps} | {z} | {clip} | {r['rounds']} | {vals} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(r):
        return r["mode"] + (f" C={r['clip']:g}" if r["clip"] is not None else "")

    # Without noise to speak of (no DP, or z < 0.01: clipping alone) a run is a horizontal line.
    flat = [r for r in runs if not r["epsilon"] or (r["z"] or 0) < 0.01]
    curves: dict[str, list[dict]] = {}
    for r in runs:
        if r not in flat:
            curves.setdefault(label(r), []).append(r)
    delta = next((r["delta"] for r in runs if r["delta"]), None)
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.4))
    for ax, (key, title) in zip(axes, COLUMNS):
        for name, rs in curves.items():
            rs = sorted(rs, key=lambda r: r["epsilon"])
            ax.plot([r["epsilon"] for r in rs], [r["metrics"].get(key) for r in rs], "o-", label=name)
        for r, style in zip(flat, ["--", ":", "-.", (0, (1, 3))]):
            ax.axhline(r["metrics"].get(key), linestyle=style, color="gray",
                       label=label(r) + (" (clipping only)" if r["epsilon"] else ""))
        ax.set_xscale("log")
        ax.set_xlabel(f"epsilon (delta={delta:g})" if delta else "epsilon")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--plot", type=Path)
    args = ap.parse_args()
    runs = [load(d) for d in args.runs]
    print(table(runs))
    if args.plot:
        plot(runs, args.plot)
        print(f"\nplot -> {args.plot}")


if __name__ == "__main__":
    main()
