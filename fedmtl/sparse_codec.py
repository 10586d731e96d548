"""exchange=sparse's wire format, Flower-free: packing a client's update of its row set
(federation/sparse.py describes the format and aggregates it on the server)."""

from __future__ import annotations

import functools
import threading

import numpy as np

from .jobs import run_jobs

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


def _row_absmax(x: np.ndarray) -> np.ndarray:
    """np.abs(x).max(axis=-1), the same values (a maximum is exact in any order; a row of zeros
    gives +0.0): rows of 16 columns or more as max(x.max(-1), -x.min(-1)) in torch, whose
    reductions over a short last axis are vectorised where numpy's loop row by row (2.2x faster
    than the column loop below for 32 columns); up to 16 columns one column at a time, where
    numpy's per-row reduction of short rows is slow (16x slower for the 3 columns of item_bias)."""
    if x.shape[-1] >= 16 and x.size and x.dtype == np.float64:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(x))
        return np.abs(torch.maximum(t.amax(-1), t.amin(-1).neg_()).numpy())  # abs: +0.0, never -0.0
    if x.shape[-1] == 0:
        return np.abs(x).max(axis=-1)
    m = np.abs(x[..., 0])
    for j in range(1, x.shape[-1]):
        np.maximum(m, np.abs(x[..., j]), out=m)
    return m


def encode(delta: np.ndarray, dtype: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray | None]:
    """A (rows, columns) update in `dtype`, and for int8 its float32 scale per row."""
    if dtype == "float32":
        return np.asarray(delta, dtype=np.float32), None
    if dtype == "float16":
        return np.asarray(delta, dtype=np.float16), None
    scale = _row_absmax(delta) / 127.0
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


_SCRATCH: dict = {}  # name -> a flat buffer rowwise_fedavg reuses from round to round (see there)
_SCRATCH_LOCK = threading.Lock()  # one rowwise_fedavg at a time uses them


def _scratch(name: str, shape: tuple, dtype) -> np.ndarray:
    """A buffer of this shape, reused across calls: fresh pages of a large array cost more than
    the arithmetic on them (a fresh 70 MB code array and its transposed copy were half of an
    ML-1M-shaped aggregation's time on this project's machine)."""
    n = int(np.prod(shape))
    a = _SCRATCH.get(name)
    if a is None or a.size < n or a.dtype != np.dtype(dtype):
        a = _SCRATCH[name] = np.empty(max(n, n + n // 4), dtype)
    return a[:n].reshape(shape)


PARALLEL_VALUES = 1 << 20  # coded values in a round from which rowwise_fedavg works on two threads


def rowwise_fedavg(current: dict[str, np.ndarray], payloads: list[dict[str, np.ndarray]], weights: np.ndarray,
                   factors: list[float]) -> dict[str, np.ndarray]:
    """The server's new arrays from many clients' packed uploads (federation/sparse.py's
    SparseFedAvg): every row of a row table moves by the `weights`-weighted mean update of the
    clients that sent it (rows nobody sent stay); every other array is the FedAvg of the
    clients' arrays (sent + update), `factors` being each client's share, as Flower's
    aggregate_arrayrecords weighs them. All clients' codes are decoded and summed at once; the
    sums run in client order, as a loop over the clients would (the same floats, bit for bit).
    A large round's work (the other arrays, and each column of the row tables) is shared by
    two threads, every sum still in client order."""
    with _SCRATCH_LOCK:
        return _rowwise_fedavg(current, payloads, weights, factors)


def _rowwise_fedavg(current, payloads, weights, factors) -> dict[str, np.ndarray]:
    shapes = {k: v.shape for k, v in current.items()}
    dense_names, row_names = layout(shapes)
    out: dict[str, np.ndarray] = {}
    if not payloads:
        return out
    jobs: list = []  # job(slot): run by run_jobs, then the outputs are put together
    values = 0  # the coded values the jobs read
    widths = [int(np.prod(shapes[n][1:])) for n in row_names]
    if row_names:  # row tables: one scatter-add of every client's decoded, weighted rows
        lens = [len(p[ROWS_KEY]) for p in payloads]
        N, J = int(sum(lens)), sum(widths)
        n_rows = shapes[row_names[0]][0]
        scaled = ROWS_SCALE in payloads[0]
        # every client's rows, weights, codes (column-major: a column of all clients' rows is
        # contiguous) and scales copied in place, client after client, into reused buffers
        rows, w = _scratch("rows", (N,), np.intp), _scratch("w", (N,), np.float64)
        codes = _scratch("codes", (J, N), payloads[0][ROWS_DELTA].dtype)
        scales = _scratch("scales", (len(widths), N), np.float64) if scaled else None
        pos = 0
        for p, n, wt in zip(payloads, lens, weights):
            rows[pos:pos + n] = p[ROWS_KEY]
            w[pos:pos + n] = wt
            codes[:, pos:pos + n] = p[ROWS_DELTA].T
            if scaled:
                scales[:, pos:pos + n] = p[ROWS_SCALE].T
            pos += n
        table_of = np.repeat(np.arange(len(widths)), widths)
        acc = np.empty((n_rows, J))

        def column(j: int, slot: int) -> None:
            # a column decoded (code x its row's scale: the same floats as astype, then *=), weighted
            # and scatter-added by bincount, which adds in the order the rows come (client order)
            col = _scratch(f"col{slot}", (N,), np.float64)
            if scaled:
                np.multiply(codes[j], scales[table_of[j]], out=col)
            else:
                np.copyto(col, codes[j], casting="unsafe")
            col *= w
            acc[:, j] = np.bincount(rows, weights=col, minlength=n_rows)

        jobs += [functools.partial(column, j) for j in range(J)]
        values += N * J
    dense: dict = {}
    if dense_names:  # every other array: FedAvg of (sent + update), one flat vector per client (the longest job)
        jobs.insert(0, functools.partial(_dense_fedavg, current, payloads, factors, dense_names, dense))
        values += len(payloads) * len(payloads[0][DENSE_DELTA])
    run_jobs(jobs, values >= PARALLEL_VALUES)
    if row_names:
        wsum = np.bincount(rows, weights=w, minlength=n_rows)
        sent = wsum > 0
        col = 0
        for name, width in zip(row_names, widths):
            cur = current[name]
            new = cur.copy()
            step = acc[sent, col:col + width] / wsum[sent][:, None]
            new[sent] = (cur[sent] + step.reshape(-1, *shapes[name][1:])).astype(new.dtype)
            out[name] = new
            col += width
    out.update(dense)
    return out


def _dense_fedavg(current: dict[str, np.ndarray], payloads: list[dict[str, np.ndarray]], factors: list[float],
                  dense_names: list[str], out: dict, _slot: int = 0) -> None:
    """rowwise_fedavg's arrays that are not row tables, into `out`: the FedAvg of every client's
    (sent + update), summed one client after another."""
    shapes = {k: v.shape for k, v in current.items()}
    cur_flat = np.concatenate([current[n].ravel() for n in dense_names]).astype(np.float64)
    dtypes = {current[n].dtype for n in dense_names}
    dtype = dtypes.pop() if len(dtypes) == 1 else np.float64
    counts = None
    if DENSE_SCALE in payloads[0]:  # the flat values of each scale row (an array's first axis, or one row)
        counts = [int(np.prod(shapes[n][1:])) if len(shapes[n]) > 1 else int(np.prod(shapes[n]))
                  for n in dense_names for _ in range(shapes[n][0] if len(shapes[n]) > 1 else 1)]
    total = None
    for b in range(0, len(payloads), 32):  # blocks of clients: small arrays, reused memory
        block = payloads[b:b + 32]
        u = np.stack([p[DENSE_DELTA] for p in block]).astype(np.float64)
        if counts is not None:  # each value's scale, repeated in C order (a fancy index on axis 1 gives a
            # Fortran-ordered array, and a product of mixed orders ran 15x slower)
            u *= np.repeat(np.stack([p[DENSE_SCALE] for p in block]).astype(np.float64), counts, axis=1)
        u += cur_flat
        # each client's (sent + update) in the arrays' dtype times its factor (a Python float: a
        # weak scalar, so the product stays in that dtype), summed one client after another
        x = u.astype(dtype) * np.asarray(factors[b:b + 32], dtype=dtype)[:, None]
        for row in x:
            if total is None:
                total = row.copy()
            else:
                total += row
    pos = 0
    for name in dense_names:
        size = int(np.prod(shapes[name]))
        out[name] = np.asarray(total[pos:pos + size].reshape(shapes[name]))
        pos += size


def sparse_payloads(row_deltas: dict[str, np.ndarray], dense_deltas: dict[str, np.ndarray], rows: list[np.ndarray],
                    n_items: int, dtype: str, rngs: list[np.random.Generator], overwrite: bool = False
                    ) -> list[dict[str, np.ndarray]]:
    """`sparse_payload` of many clients at once, the same arrays bit for bit: row_deltas
    {row table: [C, R, ...] float64 update of each client's rows, padded to the longest row set},
    dense_deltas {name: [C, ...] float64 update}, rows[c] client c's row set, rngs[c] its rounding
    generator (each client's draws come from its own stream in sparse_payload's order).
    overwrite: the int8 encoding may work in row_deltas' arrays (the caller's scratch), not in copies."""
    C = len(rows)
    dense_names, row_names = layout({**row_deltas, **dense_deltas})
    lens = np.array([len(r) for r in rows])
    R = int(lens.max()) if C else 0
    rd = [row_deltas[n].reshape(C, R, -1) for n in row_names]  # (client, row, columns) per row table
    dd = [dense_deltas[n].reshape(C, *_as_rows(dense_deltas[n][0]).shape) for n in dense_names]
    widths = [d.shape[2] for d in rd]
    dense_sizes = [d.shape[1] * d.shape[2] for d in dd]
    int8 = dtype == "int8"
    if int8:  # each client's uniforms, drawn in sparse_payload's order from its own stream
        noise_rows = [np.empty(d.shape) for d in rd]  # (np.empty: fresh zeroed pages cost more than the draws)
        noise_dense = np.empty((C, sum(dense_sizes)))
        for c in range(C):  # consecutive draws into each place: the values of one draw of the whole length
            for t in range(len(widths)):
                rngs[c].random(out=noise_rows[t][c, :lens[c]])
                noise_rows[t][c, lens[c]:] = 0.0  # (the padding rows: encoded, never sent)
            rngs[c].random(out=noise_dense[c])
    else:
        noise_rows, noise_dense = [None] * len(rd), None

    def enc(delta, noise, own=False):  # encode() over a leading client axis (row by row: any rows may go together)
        if dtype == "float32":
            return np.asarray(delta, dtype=np.float32), None
        if dtype == "float16":
            return np.asarray(delta, dtype=np.float16), None
        scale = _row_absmax(delta) / 127.0
        # encode's operations, in place (in delta itself where it is scratch: `own`)
        x = np.divide(delta, np.where(scale > 0, scale, 1.0)[..., None], out=delta if own and delta.dtype == np.float64 else None)
        np.add(x, noise, out=x)
        np.floor(x, out=x)
        np.clip(x, -127, 127, out=x)
        return x.astype(np.int8), np.asarray(scale, dtype=np.float32)

    rows_enc = [enc(d, u, overwrite) for d, u in zip(rd, noise_rows)]
    # the dense arrays' rows, those of one width encoded together (fewer, larger calls), then each
    # array's codes [C, its values] and scales [C, its rows] laid side by side in packing order
    starts = np.cumsum([0, *dense_sizes])
    by_width: dict[int, list[int]] = {}
    for i, d in enumerate(dd):
        by_width.setdefault(d.shape[2], []).append(i)
    codes, scales = [None] * len(dd), [None] * len(dd)
    for idx in by_width.values():
        noise = None if noise_dense is None else np.concatenate(
            [noise_dense[:, starts[i]:starts[i + 1]].reshape(dd[i].shape) for i in idx], axis=1)
        q, sc = enc(np.concatenate([dd[i] for i in idx], axis=1), noise, True)  # (a new array: its own)
        at = 0
        for i in idx:
            n = dd[i].shape[1]
            codes[i] = q[:, at:at + n].reshape(C, -1)
            scales[i] = None if sc is None else sc[:, at:at + n]
            at += n
    dense_q = np.concatenate(codes, axis=1) if codes else np.zeros((C, 0), np.float32)
    rows_q = np.concatenate([q for q, _ in rows_enc], axis=2) if rows_enc else np.zeros((C, R, 0))
    if int8:
        dense_s = np.concatenate(scales, axis=1) if scales else np.zeros((C, 0), np.float32)
        rows_s = np.stack([s for _, s in rows_enc], axis=2) if rows_enc else np.zeros((C, R, 0), np.float32)
    index_dtype = _index_dtype(n_items)
    out = []
    for c in range(C):
        n = int(lens[c])
        p = {ROWS_KEY: np.asarray(rows[c], dtype=np.int64).astype(index_dtype), ROWS_DELTA: rows_q[c, :n],
             DENSE_DELTA: dense_q[c]}
        if dtype == "int8":
            p[ROWS_SCALE], p[DENSE_SCALE] = rows_s[c, :n], dense_s[c]
        out.append(p)
    return out


# --- exchange=sparse under SecAgg+: row-wise averaging from two secure sums -------------------


ROW_COUNT = "row_count"  # the extra masked array: each client's 0/1 indicator of the rows it sent


def dense_rows(payload: dict[str, np.ndarray], shapes: dict[str, tuple]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """A packed sparse upload as SecAgg+ can sum it: every shared array's update at full size
    (row tables zero outside the client's rows) and the 0/1 indicator of its rows."""
    rows, upd = unpack(payload, shapes)
    _, row_names = layout(shapes)
    out = {}
    for name, shape in shapes.items():
        if name in row_names:
            full = np.zeros(shape, np.float64)
            full[rows] = upd[name]
            out[name] = full
        else:
            out[name] = upd[name]
    n_rows = max((shapes[n][0] for n in row_names), default=0)
    indicator = np.zeros(n_rows, np.float64)
    indicator[rows] = 1.0
    return out, indicator


def rowwise_mean(current: dict[str, np.ndarray], mean_update: dict[str, np.ndarray], mean_indicator: np.ndarray,
                 smallest: float) -> dict[str, np.ndarray]:
    """The new shared arrays from SecAgg+'s means of the clients' weighted updates and row
    indicators: each row of a row table moves by sum_i w_i u_i[r] / sum_i w_i 1[r sent by i]
    (the ratio of the two means: the common 1 / sum_i w_i cancels), as SparseFedAvg's mean
    over the clients that sent the row; rows nobody sent stay; other arrays move by the mean.
    `smallest`: the smallest positive mean indicator one sender can give (below half of it, a
    row counts as unsent: quantisation error, not a client)."""
    _, row_names = layout(current)
    sent = mean_indicator > smallest / 2
    out = {}
    for name, cur in current.items():
        if name in row_names:
            new = cur.astype(np.float64).copy()
            share = mean_indicator[sent].reshape(-1, *[1] * (cur.ndim - 1))
            new[sent] += mean_update[name][sent] / share
            out[name] = new.astype(cur.dtype)
        else:
            out[name] = np.asarray(cur + mean_update[name], dtype=cur.dtype)  # asarray: 0-d stays an array
    return out
