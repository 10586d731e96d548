"""`python -m fedmtl.report PATH`: one summary of every run folder under PATH.

Written into PATH (or `--out DIR`), and at the end of every sweep by fedmtl/sweep.py:

- summary.csv: one row per configuration (the runs' overrides, seed left out): how many
  runs finished, their seeds, and the mean and standard deviation over those runs of every
  final per-task test metric (`<metric>_mean`, `<metric>_std`; the sample std, empty for a
  single run);
- summary.md: the same table for the headline metrics, the runs that are not in it
  (failed, incomplete, never started) named one by one, and every run's status;
- plots/<metric>.png: each test metric against the round (the epoch for the baselines),
  one line per configuration (mean over its runs, band = one std).

A run is a folder holding any of config.json, metrics.jsonl, summary.json, error.json or
.hydra/overrides.yaml. It is complete when summary.json exists and metrics.jsonl reaches
the run's last round; otherwise it is failed (error.json) or incomplete. A sweep folder's
multirun.yaml lists the jobs the sweep was to run; a job with no folder is reported missing.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FedMTLError
from .itemitem import GRID_PREFIX, grid_overrides
from .runfiles import ERROR_FILE, read_jsonl

SEED_KEYS = ("seed",)  # the axis the mean and std are taken over
IGNORED_KEYS = ("verbose", "output_dir")  # do not change a result
RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", ERROR_FILE)


def _task_order() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tasks, preferred metrics) in table order: the registered pair tasks (rating, like, ...),
    then the ranking ones (click, ...), each with its progress-line metrics first."""
    from .tasks import REGISTRY

    tasks = [n for n, t in REGISTRY.items() if t.pairwise] + [n for n, t in REGISTRY.items() if not t.pairwise]
    return tuple(tasks), tuple(k for n in tasks for k in REGISTRY[n].log_keys())


@dataclass
class Run:
    path: Path
    name: str
    params: dict = field(default_factory=dict)  # override key -> value (strings)
    seed: str | None = None
    config: dict | None = None
    summary: dict | None = None
    rows: list = field(default_factory=list)
    status: str = "incomplete"  # complete | failed | incomplete | missing
    reason: str = ""

    def describe(self, keys) -> str:
        """The run's name and what sets it apart: `3 (weighting=dwa seed=1)`."""
        label = " ".join(f"{k}={v}" for k, v in self.params.items() if k in keys)
        label = (label + (f" seed={self.seed}" if self.seed is not None else "")).strip()
        return f"{self.name} ({label})" if label else self.name

    def curve(self, metric: str) -> dict[int, float]:
        out = {}
        for row in self.rows:
            v = row.get("test", {}).get(metric)
            if isinstance(v, (int, float)) and "round" in row:
                out[int(row["round"])] = float(v)
        return out


@dataclass
class Group:
    label: str
    params: dict
    runs: list  # every run of this configuration, whatever its status

    @property
    def complete(self) -> list:
        return [r for r in self.runs if r.status == "complete"]


@dataclass
class Report:
    root: Path
    out_dir: Path
    runs: list
    groups: list
    keys: list  # the override keys that tell configurations apart
    metrics: list  # every final per-task metric, ordered by task
    plots: list = field(default_factory=list)

    def stats(self, group: Group, metric: str) -> tuple[float | None, float | None]:
        vals = [float(r.summary["metrics"][metric]) for r in group.complete
                if isinstance(r.summary.get("metrics", {}).get(metric), (int, float))]
        return _mean_std(vals)

    def headline_table(self) -> str:
        metrics = [m for m in self.metrics if not _is_tail(m) and not _is_grid(m)]
        head = ["configuration", "runs"] + metrics
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for g in self.groups:
            cells = [g.label, _runs_cell(g)]
            for m in metrics:
                mean, std = self.stats(g, m)
                cells.append("" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}"))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def _is_tail(metric: str) -> bool:
    return metric.rsplit("_", 1)[-1] in ("p10", "p90")


def _is_grid(metric: str) -> bool:
    """A blend of the click_mix selection grid (mix_w0.1_lam300/click.ndcg@10): in summary.csv
    and ranked by --select, left out of the Markdown table and the plots."""
    return metric.startswith(GRID_PREFIX)


def _mean_std(vals: list[float]) -> tuple[float | None, float | None]:
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    if len(vals) < 2:
        return mean, None
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))


def _runs_cell(g: Group) -> str:
    seeds = ",".join(str(r.seed) for r in g.complete if r.seed is not None)
    cell = f"{len(g.complete)}" + (f" (seed {seeds})" if seeds else "")
    if len(g.complete) < len(g.runs):
        cell += f" of {len(g.runs)}"
    return cell


# ---------------------------------------------------------------- reading run folders

def _split_override(ov: str) -> tuple[str, str]:
    key, _, value = ov.partition("=")
    return key.lstrip("+~"), value


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)
    return out


def _read_overrides(path: Path) -> list[str] | None:
    f = path / ".hydra" / "overrides.yaml"
    if not f.exists():
        return None
    from omegaconf import OmegaConf
    try:
        return [str(x) for x in OmegaConf.to_container(OmegaConf.load(f))]
    except Exception:
        return None


def _final_round(cfg: dict) -> int:
    """The round (epoch, for the baselines) whose metrics.jsonl line ends a finished run."""
    if cfg.get("mode", "federated") == "federated":
        return int(cfg["num_rounds"])
    from .baselines import epochs_of
    return int(epochs_of(cfg))


def load_run(path: Path, root: Path) -> Run:
    name = str(path.relative_to(root)) if path != root else path.name
    run = Run(path=path, name=name)
    overrides = _read_overrides(path)
    try:
        if (path / "config.json").exists():
            run.config = json.loads((path / "config.json").read_text())
        if (path / "summary.json").exists():
            run.summary = json.loads((path / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        run.reason = f"unreadable: {e}"
    if overrides is not None:
        run.params = dict(_split_override(o) for o in overrides if not o.startswith("hydra."))
    elif run.config is not None:
        run.params = _flatten(run.config)
        if run.params.get("split.seed") == run.params.get("seed"):
            run.params.pop("split.seed", None)  # derived from seed
    run.seed = run.params.pop("seed", None)
    if run.seed is None and run.config is not None:
        run.seed = str(run.config.get("seed"))
    run.rows = read_jsonl(path / "metrics.jsonl")
    err = path / ERROR_FILE
    if err.exists():
        run.status = "failed"
        try:
            run.reason = json.loads(err.read_text()).get("error", "see error.json")
        except (OSError, json.JSONDecodeError):
            run.reason = "see error.json"
        return run
    if run.reason:
        return run
    if run.config is None:
        run.reason = "started, but no config.json (stopped before the run began)"
        return run
    try:
        final = _final_round(run.config)
    except (KeyError, TypeError, ValueError):
        final = None
    last = max((int(r["round"]) for r in run.rows if "round" in r), default=0)
    tested = {int(r["round"]) for r in run.rows if "test" in r and "round" in r}
    gaps = []
    if final is not None and last < final:
        gaps.append(f"metrics.jsonl ends at round {last} (of {final})" if run.rows else
                    "no complete line in metrics.jsonl" if (path / "metrics.jsonl").exists() else "no metrics.jsonl")
    elif final is not None and final not in tested:
        gaps.append(f"round {final} has no test metrics")
    if run.summary is None:
        gaps.append("no summary.json")
    if gaps:
        run.reason = ", ".join(gaps)
    else:
        run.status = "complete"
    return run


def find_run_dirs(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n not in ("plots", "split"))
        if any(f in filenames for f in RUN_FILES) or (d / ".hydra" / "overrides.yaml").exists():
            found.append(d)
            dirnames[:] = []  # a run's own sub-folders are not runs
    return sorted(found, key=lambda p: [int(x) if x.isdigit() else x for x in p.relative_to(root).parts])


def expected_jobs(sweep_dir: Path) -> list[tuple[int, list[str]]] | None:
    """The jobs a sweep was to run, from its multirun.yaml, as Hydra's basic sweeper lists
    them: (job number, its overrides). None if the file cannot be read this way."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
        task = [str(x) for x in OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)]
        params = cfg.hydra.sweeper.get("params")
        params = {} if params is None else OmegaConf.to_container(params, resolve=False)
        args = [f"{k}={v}" for k, v in params.items()] + task
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    except Exception:
        return None
    return list(enumerate(job for batch in batches for job in batch))


def collect(root: Path) -> list[Run]:
    root = Path(root)
    runs = [load_run(d, root) for d in find_run_dirs(root)]
    for mr in sorted(root.rglob("multirun.yaml")):
        sweep = mr.parent
        jobs = expected_jobs(sweep)
        if jobs is None:
            continue
        in_sweep = [r for r in runs if sweep == r.path or sweep in r.path.parents]
        seen = {tuple(sorted(o for o in (_read_overrides(r.path) or []) if not o.startswith("hydra.")))
                for r in in_sweep}
        names = {r.path.name for r in in_sweep if _read_overrides(r.path) is None}
        for num, job in jobs:
            if tuple(sorted(job)) in seen or str(num) in names:
                continue
            rel = sweep.relative_to(root) / str(num) if sweep != root else Path(str(num))
            params = dict(_split_override(o) for o in job)
            runs.append(Run(path=sweep / str(num), name=str(rel), params=params, seed=params.pop("seed", None),
                            status="missing", reason="never started (no run folder)"))
    return sorted(runs, key=lambda r: [int(x) if x.isdigit() else x for x in Path(r.name).parts])


# ---------------------------------------------------------------- grouping

def _as_override(value) -> str | None:
    """A config.json value written as Hydra writes an override value."""
    if isinstance(value, dict):
        return str(value["name"]) if "name" in value else None  # a config group: its option
    if isinstance(value, list):
        return "[" + ",".join(str(v) for v in value) + "]"
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    return str(value)


def _lookup(cfg: dict | None, key: str) -> str | None:
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return _as_override(node)


def group_runs(runs: list[Run]) -> tuple[list[Group], list[str]]:
    keys: list[str] = []
    for r in runs:
        for k in r.params:
            if k not in keys and k not in IGNORED_KEYS and k not in SEED_KEYS:
                keys.append(k)
    for r in runs:  # a key one run set and another left at its default: the default, from config.json
        for k in keys:
            if k not in r.params and _lookup(r.config, k) is not None:
                r.params[k] = _lookup(r.config, k)
    varying = [k for k in keys if len({r.params.get(k) for r in runs}) > 1]
    groups: dict[tuple, Group] = {}
    for r in runs:
        key = tuple(r.params.get(k) for k in varying)
        if key not in groups:
            params = {k: v for k, v in zip(varying, key) if v is not None}
            label = " ".join(f"{k}={v}" for k, v in params.items()) or "all runs"
            groups[key] = Group(label=label, params=params, runs=[])
        groups[key].runs.append(r)
    return list(groups.values()), varying


def _metric_order(m: str) -> tuple:
    task = m.split(".", 1)[0]
    TASK_ORDER, PREFERRED = _task_order()
    first = PREFERRED.index(m) if m in PREFERRED else len(PREFERRED)
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task, _is_tail(m), first, m)


def final_metrics(runs: list[Run]) -> list[str]:
    """Every per-task test metric (`task.name`) of the finished runs, and of the rounds an
    unfinished run did log."""
    names = set()
    for r in runs:
        tables = [row["test"] for row in r.rows if isinstance(row.get("test"), dict)]
        if r.status == "complete":
            tables.append(r.summary.get("metrics", {}))
        for t in tables:
            names |= {k for k, v in t.items() if "." in k and isinstance(v, (int, float)) and not isinstance(v, bool)}
    return sorted(names, key=_metric_order)


# ---------------------------------------------------------------- writing

def _safe(metric: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in metric.replace("@", "_at_"))


def write_plots(rep: Report) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    out = rep.out_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for metric in (m for m in rep.metrics if not _is_grid(m)):
        fig, ax = plt.subplots(figsize=(7, 4.2))
        drawn, xs = 0, set()
        for g in rep.groups:
            runs, style = g.complete, "-"
            if not runs:  # show how far an unfinished configuration got
                runs, style = [r for r in g.runs if r.rows], "--"
            curves = [c for c in (r.curve(metric) for r in runs) if c]
            if not curves:
                continue
            rounds = sorted(set().union(*curves))
            xs |= set(rounds)
            stats = [_mean_std([c[x] for c in curves if x in c]) for x in rounds]
            mean = [s[0] for s in stats]
            label = g.label if style == "-" else f"{g.label} (unfinished)"
            line, = ax.plot(rounds, mean, style, marker="o", markersize=3, label=label)
            if len(curves) > 1:
                lo = [m - (s or 0.0) for m, s in stats]
                hi = [m + (s or 0.0) for m, s in stats]
                ax.fill_between(rounds, lo, hi, color=line.get_color(), alpha=0.2)
            drawn += 1
        if not drawn:
            plt.close(fig)
            continue
        if len(xs) <= 12:
            ax.set_xticks(sorted(xs))
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("round (epochs for the centralised and local-only baselines)")
        ax.set_ylabel(metric)
        ax.set_title(f"test {metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
        fig.tight_layout()
        path = out / f"{_safe(metric)}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    return paths


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
    blends = sorted({m.split("/", 1)[0] for m in rep.metrics if _is_grid(m)})
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
        lines += [f"![{p.stem}](plots/{p.name})" for p in rep.plots if not _is_tail(p.stem)]
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


SELECT_METRICS = ("rating.rmse", "like.auc", "click.hr@10", "click.ndcg@10")
LOWER_IS_BETTER = ("rmse", "mae", "logloss")


def select(rep: Report, metrics=SELECT_METRICS) -> list[dict]:
    """Model selection on validation: every (configuration, evaluated round) is a candidate
    (the round is early stopping), scored by its mean over seeds of each metric; candidates
    are ranked per metric (1 = best, ties share a rank) and ordered by their mean rank over
    the metrics. Each blend of a click_mix grid (scored in the final evaluation) is a
    candidate too: its click metrics are the blend's, the other tasks' are its run's."""
    used = [m for m in metrics if m in rep.metrics]
    blends = sorted({m.split("/", 1)[0] for m in rep.metrics if _is_grid(m)})
    cands = []
    for g in rep.groups:
        runs = g.complete
        if not runs:
            continue
        for blend in [None, *blends]:
            name = lambda m: m if blend is None or f"{blend}/{m}" not in rep.metrics else f"{blend}/{m}"  # noqa: E731
            if blend is not None and all(name(m) == m for m in used):
                continue  # the blend changes none of the metrics ranked
            curves = {m: [r.curve(name(m)) for r in runs] for m in used}
            rounds = set.intersection(*(set(c) for m in used for c in curves[m])) if used else set()
            label = g.label if blend is None else f"{g.label} {grid_overrides(blend)}".replace("all runs ", "")
            for rnd in sorted(rounds):
                vals = {m: sum(c[rnd] for c in curves[m]) / len(runs) for m in used}
                if not all(math.isfinite(v) for v in vals.values()):
                    continue  # a diverged run is no candidate
                cands.append({"configuration": label, "round": rnd, "values": vals, "runs": len(runs)})
    for m in used:
        sign = 1 if m.rsplit(".", 1)[-1] in LOWER_IS_BETTER else -1
        order = sorted(range(len(cands)), key=lambda k: cands[k]["values"][m] * sign)
        rank, prev = 0, None
        for pos, k in enumerate(order, 1):
            if cands[k]["values"][m] != prev:
                rank, prev = pos, cands[k]["values"][m]
            cands[k].setdefault("ranks", {})[m] = rank
    for c in cands:
        c["mean_rank"] = sum(c["ranks"].values()) / max(len(used), 1)
    return sorted(cands, key=lambda c: (c["mean_rank"], c["round"]))


def on_validation(rep: Report) -> bool:
    return all(((r.config or {}).get("split") or {}).get("validation") for r in rep.runs if r.status == "complete")


def selection_table(cands: list[dict], top: int = 10) -> str:
    if not cands:
        return "no candidate: no complete run reports the selection metrics"
    used = list(cands[0]["values"])
    lines = ["| configuration | round | " + " | ".join(used) + " | mean rank |", "|" + " --- |" * (len(used) + 3)]
    for c in cands[:top]:
        lines.append(f"| {c['configuration']} | {c['round']} | "
                     + " | ".join(f"{c['values'][m]:.4f} ({c['ranks'][m]})" for m in used)
                     + f" | {c['mean_rank']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedmtl.report",
                                 description="Summary table (Markdown, CSV) and plots of every run folder under PATH.")
    ap.add_argument("path", help="a sweep folder (multirun/...), a folder of run folders, or one run folder")
    ap.add_argument("--out", default=None, help="where to write summary.md, summary.csv, plots/ (default: PATH)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--select", action="store_true",
                    help="rank every (configuration, round) by its mean rank over RMSE, AUC, HR@10 and NDCG@10 "
                         "(model selection and early stopping; run it on split.validation=true runs)")
    ap.add_argument("--by", default=None, metavar="M1,M2",
                    help=f"the metrics --select ranks by (default: those of {','.join(SELECT_METRICS)} the runs have)")
    args = ap.parse_args(argv)
    try:
        rep = write_report(args.path, args.out, plots=not args.no_plots)
    except FedMTLError as e:
        print(f"fedmtl: error: {e}", file=sys.stderr)
        return 2
    print(rep.headline_table())
    bad = [r for r in rep.runs if r.status != "complete"]
    for r in bad:
        print(f"{r.status}: {r.describe(rep.keys)}: {r.reason}")
    print(f"\n{len(rep.runs) - len(bad)} of {len(rep.runs)} runs complete -> {rep.out_dir / 'summary.md'}, "
          f"{rep.out_dir / 'summary.csv'}, {len(rep.plots)} plots in {rep.out_dir / 'plots'}")
    if args.select:
        if not on_validation(rep):
            print("fedmtl: warning: some runs were scored on TEST (split.validation=false); select on "
                  "validation runs only", file=sys.stderr)
        by = SELECT_METRICS if args.by is None else [m.strip() for m in args.by.split(",") if m.strip()]
        unknown = [] if args.by is None else [m for m in by if m not in rep.metrics]
        if unknown or not by:
            print(f"fedmtl: error: --by {args.by}: {unknown[0] if unknown else 'no metric'} is not a metric of these "
                  f"runs (they have: {', '.join(m for m in rep.metrics if not _is_grid(m) and not _is_tail(m))})",
                  file=sys.stderr)
            return 2
        cands = select(rep, by)
        print("\nselection (validation metric, its rank; best mean rank first):")
        print(selection_table(cands))
        if cands:
            best = cands[0]
            print(f"\nselected: {best['configuration']} at round {best['round']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
