"""`exchange=sparse`: clients upload only the item rows they touched, as compressed updates.

Before training, a client fixes its row set: the items in its training data plus
`pad_rows` random other items. The pad rows do two jobs. They blur which items the
client rated, and they are the negatives of its click loss: the softmax runs over
the row set only, with the pad logits shifted by log(others / pad_rows), the
sampled-softmax correction for drawing pads uniformly (`click_loss=sampled` draws its
negatives from the pads). So every item row the client changes is a row it sends,
and nothing it learnt is dropped.

A client sends its update (trained minus received), not its weights, packed in five
arrays whatever the model (each array costs a header on the wire, so one per
parameter would cost more than the int8 data of the small ones):
- `::rows`: the row set's indices (uint16 below 65,536 items);
- `::rows_delta`: those rows of every row table (item embeddings, item biases, item
  history factors), side by side;
- `::dense_delta`: every other shared array, flattened one after the other in name order;
- `::rows_scale`, `::dense_scale` (int8 only): one float32 scale per row.
`exchange.dtype` sets the update's precision: float32 (exact), float16, or int8 with a
scale per row (max |update| / 127) and stochastic rounding, so the decoded update is
unbiased. The server, which sent the arrays and knows their shapes, unpacks the update,
adds it to what it sent, averages each row over the clients that sent it (weighted by
their example counts, as FedAvg), keeps the rows nobody sent, and averages the rest as
FedAvg does.

Privacy note: the row set tells the server which items a client touched; the pad rows
blur it but do not hide it. SecAgg+ needs dense vectors of one length from every
client, so `exchange=sparse` is refused with `privacy=secagg*`.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp.strategy import FedAvg

from ..sparse_codec import (DENSE_DELTA, DENSE_SCALE, ROW_TABLES, ROWS_DELTA, ROWS_KEY, ROWS_SCALE,  # noqa: F401
                            decode, encode, layout, rowwise_fedavg, sparse_payload, unpack)
from .arrays import peek


class SparseFedAvg(FedAvg):
    """FedAvg over compressed sparse updates: row tables averaged row by row over the
    clients that sent each row, everything else as FedAvg."""

    _current: ArrayRecord | None = None

    def configure_train(self, server_round, arrays, config, grid):
        self._current = arrays
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if not valid or self._current is None:
            return None, None
        contents = [m.content for m in valid]
        weights = np.array([float(c["metrics"][self.weighted_by_key]) for c in contents])
        current = {k: v.numpy() for k, v in self._current.items()}
        raw = [c["metrics"][self.weighted_by_key] for c in contents]
        total = sum(raw)
        factors = [w / total for w in raw]  # Flower's aggregate_arrayrecords' factors (one sum, not one a client)
        # read only (rowwise_fedavg writes none of them): the arrays this process keeps, without a copy
        payloads = [{k: peek(v) for k, v in c[self.arrayrecord_key].items()} for c in contents]
        out = ArrayRecord({k: Array(np.asarray(v)) for k, v in rowwise_fedavg(current, payloads, weights,
                                                                               factors).items()})
        # the order sent: FedAvgM pairs old and new arrays by position
        out = ArrayRecord({k: out[k] for k in self._current.keys() if k in out})
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        return out, metrics
