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
  user, held-out item, then its N negatives, tab-separated; `read_candidates` takes them back.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import DataError
from .dataset import Dataset
from .split import Split, read_part

log = logging.getLogger(__name__)

PARTS = ("test", "valid")


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


def write_candidates(candidates: dict[str, np.ndarray], dataset: Dataset, folder: str | Path) -> None:
    """test_candidates.tsv / valid_candidates.tsv (raw ids): user, held-out item, negatives."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p in PARTS:
        cand = candidates[p]
        users = np.flatnonzero(cand[:, 0] >= 0)
        lines = ["\t".join(map(str, [dataset.raw_user_ids[u], *dataset.raw_item_ids[cand[u]]])) for u in users]
        tmp = folder / f".{p}_candidates.tsv.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(folder / f"{p}_candidates.tsv")


def read_candidates(folder: str | Path, dataset: Dataset, split: Split) -> dict[str, np.ndarray]:
    """The candidate files of a split folder back (dense ids); a DataError names the file and line
    of a row that is malformed, of unknown ids, or whose held-out item is not the split's."""
    folder = Path(folder)
    umap = {int(u): k for k, u in enumerate(dataset.raw_user_ids)}
    imap = {int(i): k for k, i in enumerate(dataset.raw_item_ids)}
    out, width = {}, None
    for p in PARTS:
        path = folder / f"{p}_candidates.tsv"
        if not path.is_file():
            raise DataError(f"{path}: candidate file not found (split=leave_one_out with split.path needs "
                            "test_candidates.tsv and valid_candidates.tsv)")
        held = getattr(split, p).drop_duplicates("user").set_index("user")["item"]
        rows = {}
        for no, line in enumerate(path.read_text().split("\n"), 1):
            if not line.strip():
                continue
            f = line.rstrip("\r").split("\t")
            try:
                ids = [int(x) for x in f]
            except ValueError:
                raise DataError(f"{path}:{no}: expected integer ids (user, held-out item, negatives)") from None
            if width is None:
                width = len(ids)
            if len(ids) != width or width < 3:
                raise DataError(f"{path}:{no}: expected {width} fields (user, held-out item, negatives), "
                                f"found {len(ids)}")
            if ids[0] not in umap or any(i not in imap for i in ids[1:]):
                raise DataError(f"{path}:{no}: an id that is not in the data set {dataset.name}")
            u = umap[ids[0]]
            items = [imap[i] for i in ids[1:]]
            if held.get(u) != items[0]:
                raise DataError(f"{path}:{no}: held-out item {ids[1]} is not user {ids[0]}'s {p} item in {p}.tsv")
            rows[u] = items
        cand = np.full((dataset.n_users, width - 1), -1, dtype=np.int64)
        for u, items in rows.items():
            cand[u] = items
        out[p] = cand
    return out


def read_valid(folder: str | Path, dataset: Dataset) -> pd.DataFrame:
    """valid.tsv of a split folder (raw ids) with dense ids."""
    path = Path(folder) / "valid.tsv"
    raw = read_part(path)
    for col, ids in (("user", dataset.raw_user_ids), ("item", dataset.raw_item_ids)):
        mapping = {int(x): k for k, x in enumerate(ids)}
        mapped = raw[col].map(mapping)
        if mapped.isna().any():
            raise DataError(f"{path}: {col} id {raw.loc[mapped.isna(), col].iloc[0]} is not in the data set "
                            f"{dataset.name}")
        raw[col] = mapped.astype(np.int64)
    raw["rating"] = raw["rating"].astype(np.float32)
    return raw


def select_round(rows: list[dict], key: str = "valid/click.hr@10") -> tuple[int, dict] | None:
    """(round, its evaluation) of the metrics.jsonl rows with the best validation `key`; on a
    tie the later round, as PFedRec's train.py (`val_hit_ratio >= best_val_hr`); None when no
    row has it."""
    best = None
    for row in rows:
        ev = row.get("test") or {}
        if key in ev and ev[key] is not None and (best is None or ev[key] >= best[1][key]):
            best = (int(row["round"]), ev)
    return best


def reported(rows: list[dict], last: dict, key: str = "valid/click.hr@10") -> dict:
    """What a leave-one-out run reports (summary.json): the evaluation of the round with the
    best validation `key` as "metrics", which round ("selected_round", "selected_by"), and the
    last evaluation as "metrics_last"."""
    best = select_round(rows, key)
    if best is None:
        return {"metrics": last, "metrics_last": last, "selected_round": None, "selected_by": key}
    return {"metrics": best[1], "metrics_last": last, "selected_round": best[0], "selected_by": key}
