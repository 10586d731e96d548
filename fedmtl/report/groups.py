"""Runs grouped into configurations (by the overrides that set them apart, seed left out),
the final metrics they report in table order, and the Report that the writers
(summary, plots, selection) share."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from ..itemitem import GRID_PREFIX
from .runs import Run

SEED_KEYS = ("seed",)  # the axis the mean and std are taken over
IGNORED_KEYS = ("verbose", "output_dir")  # do not change a result


def _task_order() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(tasks, preferred metrics) in table order: the registered pair tasks (rating, like, ...),
    then the ranking ones (click, ...), each with its progress-line metrics first."""
    from ..tasks import REGISTRY

    tasks = [n for n, t in REGISTRY.items() if t.pairwise] + [n for n, t in REGISTRY.items() if not t.pairwise]
    return tuple(tasks), tuple(k for n in tasks for k in REGISTRY[n].log_keys())


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
        return mean_std(vals)

    def headline_table(self) -> str:
        metrics = [m for m in self.metrics if not is_tail(m) and not is_grid(m)]
        head = ["configuration", "runs"] + metrics
        lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
        for g in self.groups:
            cells = [g.label, _runs_cell(g)]
            for m in metrics:
                mean, std = self.stats(g, m)
                cells.append("" if mean is None else f"{mean:.4f}" + ("" if std is None else f" ± {std:.4f}"))
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines)


def is_tail(metric: str) -> bool:
    return metric.rsplit("_", 1)[-1] in ("p10", "p90")


def is_grid(metric: str) -> bool:
    """A blend of the click_mix selection grid (mix_w0.1_lam300/click.ndcg@10): in summary.csv
    and ranked by --select, left out of the Markdown table and the plots."""
    return metric.startswith(GRID_PREFIX)


def mean_std(vals: list[float]) -> tuple[float | None, float | None]:
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
    return (TASK_ORDER.index(task) if task in TASK_ORDER else len(TASK_ORDER), task, is_tail(m), first, m)


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
