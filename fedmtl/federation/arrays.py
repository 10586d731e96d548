"""Flower `Array`s made fast for one process (the cohort engine's replies and states, the rows
of EASE's B the server attaches to evaluation messages).

`fast_array(a)` is `Array(a)` (the same dtype, shape, stype and .npy bytes) that also keeps
`a`: in this process whoever reads it gets a copy of `a` instead of parsing bytes, and the
bytes themselves are made only when something asks for `.data` (a message that leaves the
process, a pickled checkpoint, `count_bytes`). It pickles as a plain `Array`.
`record(arrays)` is an ArrayRecord of them; `nbytes(a)` what `len(fast_array(a).data)` is,
without making the bytes.
"""

from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.common.constant import SType

_HEADERS: dict = {}


def _header(a: np.ndarray) -> bytes:
    """The .npy header np.save writes for `a` (made once per dtype and shape: its formatting is
    most of np.save's cost for a small array)."""
    key = (a.dtype.str, a.shape)
    head = _HEADERS.get(key)
    if head is None:
        buf = io.BytesIO()
        np.save(buf, np.zeros(a.shape, a.dtype), allow_pickle=False)
        head = _HEADERS.setdefault(key, buf.getvalue()[:len(buf.getvalue()) - a.nbytes])
    return head


class _Kept(Array):
    """An Array that keeps the NumPy array it stands for and makes its bytes on demand."""

    @property
    def data(self) -> bytes:  # type: ignore[override]
        d = self.__dict__
        if d.get("_bytes") is None:
            a = d["_ndarray"]
            d["_bytes"] = _header(a) + a.tobytes()
        return d["_bytes"]

    @data.setter
    def data(self, value: bytes) -> None:  # Array.__setattr__ ("data": dirty, chunks dropped) then this
        self.__dict__["_bytes"] = value
        self.__dict__["_ndarray"] = np.load(io.BytesIO(value), allow_pickle=False)

    def numpy(self) -> np.ndarray:
        return self.__dict__["_ndarray"].copy()

    def __reduce__(self):
        return (Array, (self.dtype, self.shape, self.stype, self.data))


# A message that leaves the process names each object's class in its wire header
# (flwr.supercore.inflatable: __class__.__qualname__), which the receiver inflates by name:
# this one travels, and is hashed into its object id, as the Array it is.
_Kept.__qualname__ = "Array"


def fast_array(a: np.ndarray) -> Array:
    """Array(a), without Flower's per-argument checks and with its bytes made on demand."""
    a = np.ascontiguousarray(a) if a.ndim else np.array(a)
    out = _Kept.__new__(_Kept)
    # the attributes Array.__init__ and its __setattr__ would set (a dirty record), set directly
    out.__dict__.update(dtype=str(a.dtype), shape=tuple(int(d) for d in a.shape), stype=SType.NUMPY,
                        _bytes=None, _is_dirty=True, _ndarray=a)
    return out


def record(arrays: dict) -> ArrayRecord:
    """An ArrayRecord of `fast_array`s (ArrayRecord({...}) would copy each into a plain Array;
    its per-item type checks are skipped: the keys are names this code made, str)."""
    rec = ArrayRecord()
    rec.__dict__["_data"].update((k, fast_array(v)) for k, v in arrays.items())
    return rec


def peek(a: Array) -> np.ndarray:
    """The NumPy array behind `a` for a reader that does not write to it: a fast array's own
    array (no copy: the cohort engine reads each evaluation message's rows of EASE's B, 0.5 GB a
    round at MovieLens-100k, 15 GB at ML-1M shape), else `a.numpy()`."""
    kept = a.__dict__.get("_ndarray") if isinstance(a, _Kept) else None
    return kept if kept is not None else a.numpy()


def nbytes(a: np.ndarray) -> int:
    """len(Array(a).data): the .npy header and the values."""
    a = np.asarray(a)
    return len(_header(a)) + a.nbytes
