"""Privacy-utility table and plot from finished run folders, or the DP recipe's curve run here.

    python benchmarks/privacy_utility.py RUN_DIR [RUN_DIR ...] [--plot docs/privacy_utility.png]
    python benchmarks/privacy_utility.py --curve --ml-path DIR/ml-100k --out results/dp_curve \
        [--eps 1,2,4,8,16,inf] [--seed 0] [--set KEY=VALUE ...] [--jobs 2] [--plot docs/dp_curve.png]

--curve runs `experiment=ml100k_dp` (the default MovieLens recipe under client_clip_dp
with DP rows, docs/privacy.md) once per target epsilon (`inf`: the same clipping without
noise, z = 1e-6), `--jobs` of them at a time (each on one core), keeps finished runs (a
rerun resumes the curve), then prints the
table and draws the plot of those runs and of `experiment=ml100k_federated click_mix.weight=0`
(the recipe without privacy, the curve's reference).

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
            "correction": cfg["privacy"].get("adam_noise_correction"),
            "rounds": summary["rounds"], "seconds": summary.get("seconds"), "metrics": summary["metrics"]}


def table(runs: list[dict]) -> str:
    head = "| run | privacy | epsilon | z | C | rounds | " + " | ".join(c for _, c in COLUMNS) + " | seconds |"
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in runs:
        eps = "-" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        z = "-" if r["z"] is None else f"{r['z']:.3f}"
        clip = "-" if r["clip"] is None else f"{r['clip']:g}"
        vals = " | ".join(f"{r['metrics'][k]:.4f}" if k in r["metrics"] else "-" for k, _ in COLUMNS)
        mode = r["mode"] + (f" (adam_noise_correction {r['correction']:g})" if r.get("correction") is not None else "")
        lines.append(f"| {r['name']} | {mode} | {eps} | {z} | {clip} | {r['rounds']} | {vals} | "
                     f"{r['seconds']:.0f} |")
    return "\n".join(lines)


def plot(runs: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def label(r):
        return (r["mode"] + (f" C={r['clip']:g}" if r["clip"] is not None else "")
                + (f" g={r['correction']:g}" if r.get("correction") is not None else ""))

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


def run_curve(args) -> list[Path]:
    """The DP recipe at each epsilon of --eps (and the recipe without privacy), run where
    not finished yet; their folders."""
    import subprocess
    import sys

    common = [f"dataset.path={args.ml_path}", f"seed={args.seed}", *args.set]
    # the reference has no privacy keys (privacy=none): --set's privacy.* overrides are the DP runs' only
    plain = [o for o in common if not o.lstrip("+~").startswith("privacy.")]
    jobs = [("none", ["experiment=ml100k_federated", "click_mix.weight=0", *plain])]
    for eps in args.eps.split(","):
        if eps == "inf":
            jobs.append(("eps_inf", ["experiment=ml100k_dp", "privacy.noise_multiplier=0.000001",
                                     "privacy.target_epsilon=null", *common]))
        else:
            jobs.append((f"eps_{float(eps):g}", ["experiment=ml100k_dp", f"privacy.target_epsilon={float(eps)}",
                                                 *common]))
    out, todo = [], []
    for name, overrides in jobs:
        folder = args.out / name
        out.append(folder)
        if (folder / "summary.json").is_file():
            print(f"{name}: finished before, kept ({folder})", flush=True)
            continue
        todo.append((name, ["-m", "fedmtl.simulate", *overrides, f"hydra.run.dir={folder}"]))

    def one(job):
        name, cmd = job
        print(f"{name}: {' '.join(cmd)}", flush=True)
        done = subprocess.run([sys.executable, *cmd], cwd=Path(__file__).resolve().parent.parent,
                              stdout=subprocess.DEVNULL)
        return name, done.returncode

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        failed = [f"{name} (exit {rc})" for name, rc in pool.map(one, todo) if rc != 0]
    if failed:
        sys.exit(f"privacy_utility.py --curve: these runs failed, see their simulate.log: {', '.join(failed)}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", type=Path)
    ap.add_argument("--plot", type=Path)
    ap.add_argument("--curve", action="store_true", help="run the DP recipe's curve (--ml-path, --out)")
    ap.add_argument("--ml-path", help="--curve: the MovieLens-100k folder (GroupLens layout)")
    ap.add_argument("--out", type=Path, default=Path("results/dp_curve"))
    ap.add_argument("--eps", default="1,2,4,8,16,inf", help="--curve: target epsilons, comma-separated")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", nargs="*", default=[],
                    help="--curve: more overrides for every run (privacy.* ones: the DP runs only)")
    ap.add_argument("--jobs", type=int, default=1, help="--curve: runs at a time (each takes one core)")
    args = ap.parse_args()
    if args.curve:
        if not args.ml_path:
            ap.error("--curve needs --ml-path DIR/ml-100k")
        args.runs = run_curve(args) + args.runs
    if not args.runs:
        ap.error("give run folders, or --curve")
    runs = [load(d) for d in args.runs]
    print(table(runs))
    if args.plot:
        plot(runs, args.plot)
        print(f"\nplot -> {args.plot}")


if __name__ == "__main__":
    main()
