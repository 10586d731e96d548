"""benchmarks/loo_signals.py: the candidate signals' maths on hand-made sequences."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import loo_signals  # noqa: E402


def log(seqs: list[list[int]]) -> pd.DataFrame:
    """Each user's items in time order (one event per step)."""
    rows = [(u, i, 4.0, 100 * u + t) for u, items in enumerate(seqs) for t, i in enumerate(items)]
    return pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).astype(
        {"user": np.int64, "item": np.int64, "rating": np.float32, "ts": np.int64})


def test_the_directed_window_counts_a_pair_only_in_time_order_once_per_user():
    w = loo_signals.pairs_after(log([[0, 1, 2], [0, 1, 0]]), 2, 3, window=1)
    assert w[0, 1] == 2 and w[1, 0] == 1  # user 1 has 1 -> 0 too; user 0 has 0 -> 1 only
    assert w[1, 2] == 1 and w[2, 1] == 0 and w[0, 2] == 0  # 0 -> 2 is two steps apart: outside window 1
    assert np.all(np.diag(w) == 0)


def test_the_transition_regression_puts_each_items_successor_first():
    # every user walks the same cycle 0 -> 1 -> 2 -> 3 -> 0 from a different start
    seqs = [[(s + t) % 4 for t in range(8)] for s in range(4)]
    B = loo_signals.transitions(log(seqs), 4, 4, last=1, decay=1.0, ahead=1, lam=0.1)
    assert [int(np.argmax(B[i])) for i in range(4)] == [1, 2, 3, 0]
