"""summary.csv and summary.md of a Report, and `write_report`: the whole report of a folder
of runs (read, grouped, plotted, tabled)."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import FedMTLError
from .groups import Report, final_metrics, group_runs, is_grid, is_tail
from .plots import write_plots
from .runs import collect


def write_csv(rep: Report, path: Path) -> None:
    head = ["configuration", *rep.keys, "runs", "seeds", "not_finished", "wall_seconds_mean"]
    for m in rep.metrics:
        head += [f"{m}_mean", f"{m}_std"]
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(head)
        for g in rep.groups:
            done = g.complete
            walls = [float(r.summary["wall_seconds"]) for r in done if "wall_seconds" in r.summary]
            row = [g.label, *[g.params.get(k, "") for k in rep.keys], len(done),
                   " ".join(str(r.seed) for r in done if r.seed is not None), len(g.runs) - len(done),
                   "" if not walls else round(sum(walls) / len(walls), 3)]
            for m in rep.metrics:
                mean, std = rep.stats(g, m)
                row += ["" if mean is None else repr(mean), "" if std is None else repr(std)]
            w.writerow(row)
    os.replace(tmp, path)


def write_markdown(rep: Report, path: Path) -> None:
    runs = rep.runs
    done = sum(r.status == "complete" for r in runs)
    lines = [f"# Summary of {rep.root}", "",
             f"{done} of {len(runs)} runs complete, {len(rep.groups)} configurations. Mean ± sample std over "
             "the finished runs (seeds) of each final test metric; every metric, the p10/p90 client tails "
             "included, is in summary.csv.", "", rep.headline_table(), ""]
    blends = sorted({m.split("/", 1)[0] for m in rep.metrics if is_grid(m)})
    if blends:
        lines += [f"The final evaluations also scored {len(blends)} click blends of a click_mix grid; their "
                  "metrics are in summary.csv and `python -m fedmtl.report PATH --select` ranks them.", ""]
    bad = [r for r in runs if r.status != "complete"]
    if bad:
        lines += ["## Runs not in the table", ""]
        for r in bad:
            lines.append(f"- {r.describe(rep.keys)}: **{r.status}**: {r.reason}")
        lines.append("")
    if rep.plots:
        lines += ["## Test metrics by round", ""]
        lines += [f"![{p.stem}](plots/{p.name})" for p in rep.plots if not is_tail(p.stem)]
        lines += ["", "The p10/p90 client tails are plotted in plots/ too."]
        lines.append("")
    lines += ["## Runs", "", "| run | configuration | seed | status | last round |", "| --- | --- | --- | --- | --- |"]
    group_of = {id(r): g for g in rep.groups for r in g.runs}
    for r in runs:
        last = max((int(x["round"]) for x in r.rows if "round" in x), default="")
        lines.append(f"| {r.name} | {group_of[id(r)].label} | {r.seed if r.seed is not None else ''} | {r.status} "
                     f"| {last} |")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_report(root: str | Path, out_dir: str | Path | None = None, plots: bool = True) -> Report:
    root = Path(root)
    if not root.is_dir():
        raise FedMTLError(f"{root}: no such folder")
    runs = collect(root)
    if not runs:
        raise FedMTLError(f"{root}: no run folders under it (a run folder holds config.json or metrics.jsonl)")
    groups, keys = group_runs(runs)
    out = Path(out_dir) if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)
    rep = Report(root=root, out_dir=out, runs=runs, groups=groups, keys=keys, metrics=final_metrics(runs))
    if plots:
        rep.plots = write_plots(rep)
    write_csv(rep, out / "summary.csv")
    write_markdown(rep, out / "summary.md")
    return rep
