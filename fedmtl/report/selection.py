"""`--select`: model selection on validation runs. Every (configuration, evaluated round),
and every blend of a click_mix grid, is ranked by its mean rank over the selection metrics."""

from __future__ import annotations

import math

from ..itemitem import grid_overrides
from .groups import Report, is_grid

SELECT_METRICS = ("rating.rmse", "like.auc", "click.hr@10", "click.ndcg@10")
LOWER_IS_BETTER = ("rmse", "mae", "logloss")


def select(rep: Report, metrics=SELECT_METRICS) -> list[dict]:
    """Model selection on validation: every (configuration, evaluated round) is a candidate
    (the round is early stopping), scored by its mean over seeds of each metric; candidates
    are ranked per metric (1 = best, ties share a rank) and ordered by their mean rank over
    the metrics. Each blend of a click_mix grid (scored in the final evaluation) is a
    candidate too: its click metrics are the blend's, the other tasks' are its run's."""
    used = [m for m in metrics if m in rep.metrics]
    blends = sorted({m.split("/", 1)[0] for m in rep.metrics if is_grid(m)})
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
