"""A group of training replies checked together (`validate_train_replies`): the cohort engine's
thousands of sparse int8 replies a round have their values checked with one NumPy call a key
over all of them, with replies.py's per-reply check (`validate_train_reply`) giving each
reply's answer wherever anything is not as expected."""

from __future__ import annotations

import numpy as np

from .replies import Rules, _check_metrics, _packed_width, _records, validate_train_reply
from .sparse import DENSE_DELTA, DENSE_SCALE, ROWS_DELTA, ROWS_KEY, ROWS_SCALE


def validate_train_replies(contents: list, sent: dict[str, np.ndarray], rules: Rules) -> list[str | None]:
    """`validate_train_reply` of each content, the same answers, for replies to the same arrays
    `sent`. Sparse int8 replies (the cohort engine's, thousands a round) whose records, keys,
    dtypes and shapes are the ones expected have their values checked together: one min, max or
    isfinite a key over all of them, not some 20 NumPy calls a reply. Every other reply, and
    every reply of a group any of whose values fails, is checked on its own (its problem then
    reads as validate_train_reply's). All of a group passing is each of its replies passing:
    the group's checks are the per-reply checks taken over the concatenated values."""
    norm_check = rules.max_update_norm is not None and rules.on_large_update == "reject"
    if rules.exchange != "sparse" or rules.dtype != "int8" or norm_check or len(contents) < 2:
        return [validate_train_reply(c, sent, rules) for c in contents]
    width, size, srows, n_items, n_tables = _packed_width(tuple((k, v.shape) for k, v in sent.items()))
    out: list[str | None] = [None] * len(contents)
    group: list[tuple[int, dict]] = []
    for i, c in enumerate(contents):
        v = _usual_int8_reply(c, rules, width, size, srows, n_tables)
        if v is None:
            out[i] = validate_train_reply(c, sent, rules)
        else:
            group.append((i, v))
    if group:
        try:
            ok = _int8_values_pass([v for _, v in group], n_items, rules.max_abs_update)
        except Exception:  # noqa: BLE001 -- anything odd: each reply on its own, as ever
            ok = False
        if not ok:
            for i, _ in group:
                out[i] = validate_train_reply(contents[i], sent, rules)
    return out


_INT8_KEYS = frozenset((ROWS_KEY, ROWS_DELTA, DENSE_DELTA, ROWS_SCALE, DENSE_SCALE))


def _usual_int8_reply(content, rules: Rules, width: int, size: int, srows: int, n_tables: int):
    """A sparse int8 reply's arrays by key when everything but their values is as expected (the
    records, the metrics, the keys, int8 codes, float scales, integer rows, the shapes), else None."""
    from .arrays import peek

    try:
        arrays, metrics = _records(content)
        _check_metrics(metrics, rules)
        keys = list(arrays.keys())
        if len(keys) != len(_INT8_KEYS) or set(keys) != _INT8_KEYS:
            return None
        v = {k: peek(arrays[k]) for k in keys}
    except Exception:  # noqa: BLE001 -- validate_train_reply says what
        return None
    rows = v[ROWS_KEY]
    if not isinstance(rows, np.ndarray) or rows.ndim != 1 or rows.dtype.kind not in "iu":
        return None
    n = len(rows)
    want = {ROWS_DELTA: (n, width), DENSE_DELTA: (size,), ROWS_SCALE: (n, n_tables), DENSE_SCALE: (srows,)}
    for k, shape in want.items():
        a = v[k]
        if not isinstance(a, np.ndarray) or a.shape != shape:
            return None
        if (a.dtype != np.int8) if k in (ROWS_DELTA, DENSE_DELTA) else (a.dtype.kind != "f"):
            return None
    return v


def _int8_values_pass(group: list[dict], n_items: int, bound: float) -> bool:
    """Whether every reply of the group passes sparse_update's checks of values: rows in
    [0, n_items) and each reply's strictly increasing, scales finite, >= 0 and x 127 within
    `bound`, codes >= -127."""
    rows = [v[ROWS_KEY] for v in group]
    allrows = np.concatenate([r.astype(np.int64, copy=False) for r in rows])
    if allrows.size:
        if int(allrows.min()) < 0 or int(allrows.max()) >= n_items:
            return False
        up = allrows[1:] > allrows[:-1]
        starts = np.cumsum([len(r) for r in rows])[:-1]  # where a reply's rows start: no order across replies
        up[starts[(starts > 0) & (starts < len(allrows))] - 1] = True
        if not up.all():
            return False
    for k in (ROWS_SCALE, DENSE_SCALE):
        sc = np.concatenate([v[k].ravel() for v in group])
        if sc.size and not (np.isfinite(sc).all() and float(sc.min()) >= 0 and float(sc.max()) * 127 <= bound):
            return False
    for k in (ROWS_DELTA, DENSE_DELTA):
        q = np.concatenate([v[k].ravel() for v in group])
        if q.size and int(q.min()) < -127:
            return False
    return True
