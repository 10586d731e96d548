"""Temporal splits of an InteractionLog for repeat consumption: the future is the test.

Both splits return three plain DataFrames of events (train, valid, test), each with the log's
columns and rows in log order; nothing is dropped, so train + valid + test is the whole log.

- `last_basket(log)`: baskets (orders, sessions) are ordered per user by their earliest ts,
  ties by their first row in the log. A user's last basket is test, the second-to-last the
  validation carve, the rest train. A user with 2 baskets has train and test, no validation
  basket; a user with 1 basket has train only (no history to predict it from, so it is never
  scored). `validation=False` keeps the second-to-last basket in train.
- `last_k(log, k)`: a user's events ordered by ts, ties by log order; the last k are test,
  the k before them validation, the rest train. A user with at most k events has train only;
  one with k+1..2k events train and test, no validation (`validation=False`: no valid part).

Under both, validation is scored with train as the history, test with train + valid.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .interaction_log import InteractionLog


def _parts(events: pd.DataFrame, part: np.ndarray):
    """(train, valid, test) frames from a per-row part code 0/1/2, in log order."""
    return tuple(events[part == k].reset_index(drop=True) for k in (0, 1, 2))


def last_basket(log: InteractionLog, validation: bool = True):
    """(train, valid, test): each user's last basket is test, the one before it valid."""
    if not log.has_basket:
        raise DataError(f"{log.name}: the log has no basket column; last_basket needs one "
                        "(columns.basket), or use last_k")
    ev = log.events
    baskets, per = _baskets(ev)
    part = np.zeros(len(per), dtype=np.int8)
    part[(per["back"] == 0).to_numpy() & (per["n"] >= 2).to_numpy()] = 2
    if validation:
        part[(per["back"] == 1).to_numpy() & (per["n"] >= 3).to_numpy()] = 1
    per["part"] = part
    row_part = baskets.merge(per[["user", "basket", "part"]], on=["user", "basket"], how="left")["part"]
    return _parts(ev, row_part.to_numpy())


def last_k(log: InteractionLog, k: int = 1, validation: bool = True):
    """(train, valid, test): each user's last k events (by ts, ties by log order) are test."""
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
        raise ConfigError(f"last_k: k must be a positive integer, got {k!r}")
    ev = log.events
    order, back, n = _event_back(ev)
    part_sorted = np.zeros(len(ev), dtype=np.int8)
    part_sorted[(back < k) & (n > k)] = 2
    if validation:
        part_sorted[(back >= k) & (back < 2 * k) & (n > 2 * k)] = 1
    part = np.empty(len(ev), dtype=np.int8)
    part[order] = part_sorted
    return _parts(ev, part)


def _baskets(ev: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(rows, baskets): each row's user and basket, and a table of the baskets ordered per user
    by earliest ts (ties by first row) with `back` (0 = the user's last basket) and `n`."""
    baskets = pd.DataFrame({"user": ev["user"].to_numpy(), "basket": ev["basket"].to_numpy(),
                            "ts": ev["ts"].to_numpy(), "pos": np.arange(len(ev))})
    per = baskets.groupby(["user", "basket"], sort=False).agg(ts=("ts", "min"), pos=("pos", "min")).reset_index()
    per = per.sort_values(["user", "ts", "pos"], kind="stable")
    # rank from the end: 0 = the user's last basket, 1 = the one before, ...
    per["back"] = per.groupby("user").cumcount(ascending=False)
    per["n"] = per.groupby("user")["basket"].transform("size")
    return baskets, per


def _event_back(ev: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(order, back, n): rows sorted per user by ts (ties by log order), each sorted row's rank
    from the user's end (0 = the last event) and the user's event count."""
    order = np.lexsort((np.arange(len(ev)), ev["ts"].to_numpy(), ev["user"].to_numpy()))
    sorted_frame = pd.DataFrame({"user": ev["user"].to_numpy()[order]})
    back = sorted_frame.groupby("user").cumcount(ascending=False).to_numpy()
    n = sorted_frame.groupby("user")["user"].transform("size").to_numpy()
    return order, back, n


def recency(events: pd.DataFrame) -> np.ndarray:
    """Each row's age in its user's history: how many of the user's baskets come after the row's
    basket (0: its last basket), or, in a log without a basket column, how many of the user's
    events come after it (by ts, ties by log order). `ranking.repeat_decay` weighs a repeat by
    decay ** age."""
    if len(events) == 0:
        return np.zeros(0, dtype=np.int64)
    if "basket" in events.columns:
        baskets, per = _baskets(events)
        return baskets.merge(per[["user", "basket", "back"]], on=["user", "basket"], how="left")["back"].to_numpy()
    order, back, _ = _event_back(events)
    out = np.empty(len(events), dtype=np.int64)
    out[order] = back
    return out
