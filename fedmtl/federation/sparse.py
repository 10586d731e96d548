"""`exchange=sparse`: clients upload only the item rows they touched.

A client sends, for each row-indexed table (item embeddings and item biases),
the rows of the items in its training data plus `pad_rows` random other rows,
as `<name>::rows` (indices) and `<name>::values`; everything else is sent dense.
The server averages each row over the clients that sent it (weighted by their
example counts, as FedAvg) and keeps the current value of rows nobody sent.

Privacy note: the row set tells the server which items a client touched; the
random pad rows blur it but do not hide it. SecAgg+ needs dense vectors of one
length from every client, so `exchange=sparse` is refused with `privacy=secagg*`.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, RecordDict
from flwr.serverapp.strategy import FedAvg
from flwr.serverapp.strategy.strategy_utils import aggregate_arrayrecords

ROW_TABLES = ("encoder.item_emb.weight", "encoder.item_bias.weight", "encoder.item_hist.weight")
ROWS, VALUES = "::rows", "::values"


def sparse_payload(arrays: dict[str, np.ndarray], touched: np.ndarray, n_items: int, pad_rows: int,
                   rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Replace each row table by its touched (and padding) rows."""
    touched = np.unique(touched)
    if pad_rows > 0:
        others = np.setdiff1d(np.arange(n_items), touched)
        pad = rng.choice(others, size=min(pad_rows, len(others)), replace=False)
        rows = np.sort(np.concatenate([touched, pad]))
    else:
        rows = touched
    out = {}
    for name, value in arrays.items():
        if name in ROW_TABLES:
            out[name + ROWS] = rows.astype(np.int64)
            out[name + VALUES] = value[rows]
        else:
            out[name] = value
    return out


class SparseFedAvg(FedAvg):
    """FedAvg whose row tables are averaged row by row over the clients that sent each row."""

    _current: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid:
            return None, None
        contents = [m.content for m in valid]
        weights = np.array([float(c["metrics"][self.weighted_by_key]) for c in contents])
        # Dense part: Flower's own weighted average over the dense arrays.
        dense = []
        for c in contents:
            rec = c[self.arrayrecord_key]
            d = {k: v for k, v in rec.items() if ROWS not in k and VALUES not in k}
            dense.append(RecordDict({self.arrayrecord_key: ArrayRecord(d), "metrics": c["metrics"]}))
        out = aggregate_arrayrecords(dense, self.weighted_by_key)
        for name in ROW_TABLES:
            if self._current is None or name not in self._current:
                continue
            current = self._current[name].numpy()
            acc = np.zeros_like(current, dtype=np.float64)
            wsum = np.zeros(current.shape[0])
            for c, w in zip(contents, weights):
                rec = c[self.arrayrecord_key]
                rows, values = rec[name + ROWS].numpy(), rec[name + VALUES].numpy()
                acc[rows] += w * values
                wsum[rows] += w
            sent = wsum > 0
            new = current.copy()
            new[sent] = (acc[sent] / wsum[sent][:, None]).astype(current.dtype)
            out[name] = Array(new)
        if self._current is not None:  # the order sent: FedAvgM pairs old and new arrays by position
            out = ArrayRecord({k: out[k] for k in self._current.keys() if k in out})
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return out, metrics
