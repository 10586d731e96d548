"""The published federated protocol (PROTOCOL.md: NCF, PFedRec, CoFedRec): leave-one-out
with sampled negatives.

- Every rating is a positive interaction. Per user, the latest interaction by timestamp is
  the test item, the second latest the validation item, the rest train. Ties are broken by
  file order as the published code does (PFedRec's data.py: pandas
  `rank(method='first', ascending=False)` on the timestamps): among equal timestamps the
  line earlier in the file counts as the later interaction. Users with fewer than 3
  interactions cannot have all three and are dropped with a warning.
- Candidates (`split=leave_one_out`, `eval.negatives=N`): for each user, N test negatives
  and N other validation negatives, drawn once, uniformly and without replacement, from the
  items the user never interacted with (train, validation or test), from a generator seeded
  by the split seed. A candidate row is [held-out item, N negatives]; the held-out item is
  ranked among its N + 1 (metrics.sampled_rank_metrics: negatives ahead on a score tie).
- Files (split/ of the run folder, raw ids): valid.tsv beside train.tsv and test.tsv
  (user item rating ts), and test_candidates.tsv / valid_candidates.tsv, one line per user:
  user, held-out item, then its N negatives, tab-separated (split.py writes and reads them).
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from ..errors import DataError
from .split import PARTS, Split

log = logging.getLogger(__name__)



def leave_one_out(inter: pd.DataFrame) -> Split:
    """Per user: latest interaction test, second latest validation, the rest train (train keeps log order)."""
    inter = inter.reset_index(drop=True)
    # (user, ts, reversed line) order: the last row of a user is its latest, the earliest line on a tie
    order = np.lexsort((-np.arange(len(inter)), inter["ts"].to_numpy(), inter["user"].to_numpy()))
    users = inter["user"].to_numpy()[order]
    last = np.r_[users[1:] != users[:-1], True]
    second = np.r_[last[1:], False] & ~last
    counts = np.bincount(users)
    small = counts[users] < 3
    if small.any():
        log.warning("split: %d users with fewer than 3 interactions dropped (leave_one_out needs train, "
                    "validation and test)", int(((counts > 0) & (counts < 3)).sum()))
    is_test = np.zeros(len(inter), bool)
    is_valid = np.zeros(len(inter), bool)
    is_test[order[last & ~small]] = True
    is_valid[order[second & ~small]] = True
    dropped = np.zeros(len(inter), bool)
    dropped[order[small]] = True
    is_train = ~(is_test | is_valid | dropped)
    by_user = lambda m: inter[m].sort_values("user", kind="stable").reset_index(drop=True)  # noqa: E731
    return Split(train=by_user(is_train), test=by_user(is_test), valid=by_user(is_valid))


def draw_candidates(split: Split, n_items: int, n_users: int, negatives: int, seed: int) -> dict[str, np.ndarray]:
    """{"test": [n_users, 1 + negatives], "valid": ...}: the held-out item then its negatives
    (dense ids; rows of users without a held-out item are -1). Test and validation negatives
    are distinct, and none is an item the user interacted with."""
    rng = np.random.default_rng([int(seed), 28])  # its own stream: nothing else draws from it
    held = {p: getattr(split, p) for p in PARTS}
    out = {p: np.full((n_users, 1 + negatives), -1, dtype=np.int64) for p in PARTS}
    seen = pd.concat([split.train, split.test, split.valid])
    seen_by_user = seen.groupby("user")["item"].agg(lambda s: np.unique(s.to_numpy()))
    first = {p: held[p].drop_duplicates("user").set_index("user")["item"] for p in PARTS}
    for u in sorted(first["test"].index):
        pool = np.setdiff1d(np.arange(n_items), seen_by_user[u])
        if len(pool) < 2 * negatives:
            raise DataError(f"eval.negatives={negatives}: user {u} has only {len(pool)} items it never interacted "
                            f"with; {2 * negatives} are needed (test and validation negatives are distinct)")
        neg = rng.choice(pool, size=2 * negatives, replace=False)
        for k, p in enumerate(PARTS):
            if u in first[p].index:
                out[p][u, 0] = int(first[p][u])
                out[p][u, 1:] = neg[k * negatives:(k + 1) * negatives]
    return out


def select_round(rows: list[dict], key: str) -> tuple[int, dict] | None:
    """(round, its evaluation) of the metrics.jsonl rows with the best validation `key`; on a
    tie the later round, as PFedRec's train.py (`val_hit_ratio >= best_val_hr`); None when no
    row has it."""
    best = None
    for row in rows:
        ev = row.get("test") or {}
        if key in ev and ev[key] is not None and (best is None or ev[key] >= best[1][key]):
            best = (int(row["round"]), ev)
    return best


def reported(rows: list[dict], last: dict, key: str) -> dict:
    """What a leave-one-out run reports (summary.json): the evaluation of the round with the
    best validation `key` as "metrics", which round ("selected_round", "selected_by"), and the
    last evaluation as "metrics_last"."""
    best = select_round(rows, key)
    if best is None:
        return {"metrics": last, "metrics_last": last, "selected_round": None, "selected_by": key}
    return {"metrics": best[1], "metrics_last": last, "selected_round": best[0], "selected_by": key}
