"""The pipe between an in-process grid and its worker processes (engine/inprocess.py): what
crosses it is pickled with `dumps` and read with `loads`; `matrices` finds the matrices whose
rows evaluation messages carry, which a worker is sent once and named by a key after."""

from __future__ import annotations

import pickle

from flwr.app import Message


def dumps(obj, known: dict | None = None) -> bytes:
    """pickle.dumps for the pipe between the grid and its workers: arrays the cohort engine keeps
    (federation/arrays.py) travel as their NumPy values, and rows of a matrix (the rows of EASE's B
    an evaluation message carries) as the matrix and the row numbers, instead of each as the .npy
    bytes a message that leaves the process carries. known {id(matrix): (matrix, key)}: matrices
    the worker already holds travel as their key (`loads` there)."""
    import copyreg
    import io

    from ..federation.arrays import pipe_reducers

    buf = io.BytesIO()
    p = pickle.Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL)
    p.dispatch_table = {**copyreg.dispatch_table, **pipe_reducers()}
    if known:
        def persistent_id(o):
            hit = known.get(id(o))
            return hit[1] if hit is not None and hit[0] is o else None

        p.persistent_id = persistent_id
    p.dump(obj)
    return buf.getvalue()


def loads(data: bytes, matrices: dict):
    """pickle.loads of `dumps`, the matrices sent as keys taken from `matrices`."""
    import io

    u = pickle.Unpickler(io.BytesIO(data))
    u.persistent_load = matrices.__getitem__
    return u.load()


def matrices(msgs: list[Message]):
    """The matrices whose rows (not taken yet) evaluation messages carry (click_mix's B)."""
    from ..federation.arrays import rows_source
    from ..itemitem import RowsOf

    seen = {}
    for m in msgs:
        if m.has_content() and "item_item" in m.content:
            for a in m.content["item_item"].values():
                src = rows_source(a)
                if isinstance(src, RowsOf):
                    seen[id(src.matrix)] = src.matrix
    return list(seen.values())
