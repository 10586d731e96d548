"""exchange=sparse's wire format, Flower-free: packing a client's update of its row set
(federation/sparse.py describes the format and aggregates it on the server)."""

from __future__ import annotations

import numpy as np

ROW_TABLES = ("encoder.item_emb.weight", "encoder.item_bias.weight", "encoder.item_hist.weight")


def _index_dtype(n_items: int):
    return np.uint16 if n_items <= np.iinfo(np.uint16).max + 1 else np.int32


ROWS_KEY, ROWS_DELTA, ROWS_SCALE = "::rows", "::rows_delta", "::rows_scale"
DENSE_DELTA, DENSE_SCALE = "::dense_delta", "::dense_scale"


def layout(names) -> tuple[list[str], list[str]]:
    """(dense names in name order, row tables present): the packing order both sides use."""
    return sorted(n for n in names if n not in ROW_TABLES), [n for n in ROW_TABLES if n in names]


def _as_rows(a: np.ndarray) -> np.ndarray:
    """An array as (rows, columns): its first axis, or one row for 0-d and 1-d arrays."""
    return a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(1, -1)


def encode(delta: np.ndarray, dtype: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A (rows, columns) update in `dtype`, and for int8 its float32 scale per row."""
    if dtype == "float32":
        return np.asarray(delta, dtype=np.float32), None
    if dtype == "float16":
        return np.asarray(delta, dtype=np.float16), None
    scale = np.abs(delta).max(axis=1) / 127.0
    x = delta / np.where(scale > 0, scale, 1.0)[:, None]
    q = np.floor(x + rng.random(x.shape))  # stochastic rounding: E[q] = x
    return np.asarray(np.clip(q, -127, 127), dtype=np.int8), np.asarray(scale, dtype=np.float32)


def decode(q: np.ndarray, scale: np.ndarray | None) -> np.ndarray:
    out = q.astype(np.float64)
    return out if scale is None else out * scale.astype(np.float64)[:, None]


def sparse_payload(arrays: dict[str, np.ndarray], received: dict[str, np.ndarray], rows: np.ndarray,
                   n_items: int, dtype: str = "float32", rng: np.random.Generator | None = None
                   ) -> dict[str, np.ndarray]:
    """The upload: the update of every shared array, row tables restricted to `rows`, packed."""
    rng = rng if rng is not None else np.random.default_rng(0)
    rows = np.asarray(rows, dtype=np.int64)
    dense_names, row_names = layout(arrays)

    def delta(name):
        return arrays[name].astype(np.float64) - received[name].astype(np.float64)

    out = {ROWS_KEY: rows.astype(_index_dtype(n_items))}
    parts = [encode(_as_rows(delta(n)[rows]), dtype, rng) for n in row_names]
    out[ROWS_DELTA] = np.concatenate([q for q, _ in parts], axis=1) if parts else np.zeros((len(rows), 0))
    parts_d = [encode(_as_rows(delta(n)), dtype, rng) for n in dense_names]
    out[DENSE_DELTA] = np.concatenate([q.ravel() for q, _ in parts_d]) if parts_d else np.zeros(0, np.float32)
    if dtype == "int8":
        out[ROWS_SCALE] = np.stack([s for _, s in parts], axis=1) if parts else np.zeros((len(rows), 0), np.float32)
        out[DENSE_SCALE] = np.concatenate([s for _, s in parts_d]) if parts_d else np.zeros(0, np.float32)
    return out


def unpack(payload: dict[str, np.ndarray], shapes: dict[str, tuple]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(rows, {name: update}) of a packed upload, given the shapes of the arrays sent; the
    update of a row table covers only `rows`."""
    dense_names, row_names = layout(shapes)
    rows = np.asarray(payload[ROWS_KEY], dtype=np.int64)
    out = {}
    q_rows, s_rows = payload[ROWS_DELTA], payload.get(ROWS_SCALE)
    col = 0
    for t, name in enumerate(row_names):
        width = int(np.prod(shapes[name][1:]))
        q = q_rows[:, col:col + width]
        out[name] = decode(q, None if s_rows is None else s_rows[:, t]).reshape((len(rows), *shapes[name][1:]))
        col += width
    flat, scales = payload[DENSE_DELTA], payload.get(DENSE_SCALE)
    pos = srow = 0
    for name in dense_names:
        shape = tuple(shapes[name])
        n_rows = shape[0] if len(shape) > 1 else 1
        size = int(np.prod(shape))
        q = flat[pos:pos + size].reshape(n_rows, -1)
        out[name] = decode(q, None if scales is None else scales[srow:srow + n_rows]).reshape(shape)
        pos, srow = pos + size, srow + n_rows
    if pos != len(flat) or col != q_rows.shape[1]:
        raise ValueError(f"exchange=sparse: an upload of {len(flat)} dense values does not fit the {pos} sent")
    return rows, out
