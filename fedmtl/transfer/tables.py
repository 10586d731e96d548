"""The transfer.md tables of a transfer report (new users by k and start; new items by scorer
and rows)."""

from __future__ import annotations

import math

from ..metrics import HEADLINE
from ..tasks import ranking_tasks


def fmt(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def tables(report: dict, tasks) -> str:
    keys = [HEADLINE[t][0] for t in tasks] + [f"{t.name}.hr@{t.k}" for t in ranking_tasks(tasks)]
    lines = []
    nu = report.get("new_users")
    if nu:
        lines += [f"New users ({nu['users']} scored of {nu['held_out']} held out; fine-tuned {nu['epochs']} epochs, "
                  f"encoder frozen, tuning {nu.get('tune', 'personal')}; head prior: {'aggregated heads' if nu['head_prior'] else 'none (fresh heads)'})",
                  "", "| k | start | " + " | ".join(keys) + " |", "| --- | --- |" + " --- |" * len(keys)]
        for k in nu["k"]:
            for name in ("transfer", "scratch"):
                m = nu[name][str(k)] if str(k) in nu[name] else nu[name][k]
                lines.append(f"| {k} | {name} | " + " | ".join(fmt(m.get(x)) for x in keys) + " |")
        lines.append("| any | popularity | " + " | ".join(fmt(nu["popularity"].get(x)) for x in keys) + " |")
        lines.append("")
    ni = report.get("new_items")
    if ni:
        lines += [f"New items ({ni['items']} hidden from training, scored from their features)", "",
                  "| scorer | rows | " + " | ".join(keys) + " |", "| --- | --- |" + " --- |" * len(keys)]
        for name in ("model", "popularity", "random"):
            for rows in ("new_items", "known_items"):
                m = ni[name]
                lines.append(f"| {name} | {rows} | " + " | ".join(fmt(m.get(f"{rows}/{x}")) for x in keys) + " |")
        lines.append("")
    return "\n".join(lines)
