"""Privacy-utility table and plot from finished run folders.

    python benchmarks/privacy_utility.py RUN_DIR [RUN_DIR ...] [--plot docs/privacy_utility.png]

Reads each folder's config.json and summary.json (written by `python -m fedmtl.simulate`)
and prints one markdown row per run: the privacy mode, the epsilon spent (delta in the
header), the noise multiplier, the rounds run and the final per-task test metrics. With
--plot, draws each task's headline metric against epsilon (runs without DP as lines).
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

    dp = sorted((r for r in runs if r["epsilon"]), key=lambda r: r["epsilon"])
    flat = [r for r in runs if not r["epsilon"]]
    fig, axes = plt.subplots(1, len(COLUMNS), figsize=(4 * len(COLUMNS), 3.2))
    for ax, (key, label) in zip(axes, COLUMNS):
        ax.plot([r["epsilon"] for r in dp], [r["metrics"].get(key) for r in dp], "o-", label="central_dp")
        for r, style in zip(flat, ["--", ":", "-."]):
            ax.axhline(r["metrics"].get(key), linestyle=style, color="gray", label=r["mode"])
        ax.set_xscale("log")
        ax.set_xlabel(f"epsilon (delta={dp[0]['delta']:g})" if dp else "epsilon")
        ax.set_title(label)
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
