"""Flower `Array`s made fast for one process (the cohort engine's replies and states, the rows
of EASE's B the server attaches to evaluation messages).

`fast_array(a)` is `Array(a)` (the same dtype, shape, stype and .npy bytes) that also keeps
`a`: in this process whoever reads it gets a copy of `a` instead of parsing bytes, and the
bytes themselves are made only when something asks for `.data` (a message that leaves the
process, a pickled checkpoint, `count_bytes`). It pickles as a plain `Array`.
`record(arrays)` is an ArrayRecord of them; `nbytes(a)` what `len(fast_array(a).data)` is,
without making the bytes. A value of `record` that is an `itemitem.RowsOf` (rows of a matrix)
becomes an Array of those rows that takes them only when read: the cohort engine reads the
matrix and the row numbers instead (`rows_source`), so the rows of EASE's B it attaches to a
round's evaluation messages are never copied in one process.
"""

from __future__ import annotations

import io

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord
from flwr.common.constant import SType

from ..itemitem import RowsOf

_HEADERS: dict = {}


def _header(a: np.ndarray) -> bytes:
    """The .npy header np.save writes for `a` (made once per dtype and shape: its formatting is
    most of np.save's cost for a small array)."""
    return _header_of(a.dtype, a.shape)


def _header_of(dtype: np.dtype, shape: tuple) -> bytes:
    key = (dtype.str, shape)
    head = _HEADERS.get(key)
    if head is None:
        buf = io.BytesIO()
        z = np.zeros(shape, dtype)
        np.save(buf, z, allow_pickle=False)
        head = _HEADERS.setdefault(key, buf.getvalue()[:len(buf.getvalue()) - z.nbytes])
    return head


_DTYPE_NAMES: dict = {}


def _dtype_name(dtype: np.dtype) -> str:
    """str(dtype), as Array stores it (numpy's dtype.__str__ is Python code: 7 us a call)."""
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES.setdefault(dtype, str(dtype))
    return name


class _Kept(Array):
    """An Array that keeps the NumPy array it stands for and makes its bytes on demand."""

    @property
    def data(self) -> bytes:  # type: ignore[override]
        d = self.__dict__
        if d.get("_bytes") is None:
            a = self._values()
            d["_bytes"] = _header(a) + a.tobytes()
        return d["_bytes"]

    @data.setter
    def data(self, value: bytes) -> None:  # Array.__setattr__ ("data": dirty, chunks dropped) then this
        self.__dict__["_bytes"] = value
        self.__dict__["_ndarray"] = np.load(io.BytesIO(value), allow_pickle=False)

    def _values(self) -> np.ndarray:
        """The array it stands for (not to be written to)."""
        return self.__dict__["_ndarray"]

    def numpy(self) -> np.ndarray:
        return self._values().copy()

    def __reduce__(self):
        return (Array, (self.dtype, self.shape, self.stype, self.data))


# A message that leaves the process names each object's class in its wire header
# (flwr.supercore.inflatable: __class__.__qualname__), which the receiver inflates by name:
# this one travels, and is hashed into its object id, as the Array it is.
_Kept.__qualname__ = "Array"


class _Rows(_Kept):
    """An Array of rows of a matrix (`RowsOf`) that takes them only when read."""

    def _values(self) -> np.ndarray:
        kept = self.__dict__["_ndarray"]  # set with its bytes from outside, else the rows taken now
        return kept if kept is not None else self.__dict__["_rows"].take()


_Rows.__qualname__ = "Array"


def rows_array(src: RowsOf) -> Array:
    """Array(src.matrix[src.items]), its rows taken only when read."""
    out = _Rows.__new__(_Rows)
    m = src.matrix
    out.__dict__.update(dtype=_dtype_name(m.dtype), shape=(len(src.items), *(int(d) for d in m.shape[1:])),
                        stype=SType.NUMPY, _bytes=None, _is_dirty=True, _ndarray=None, _rows=src)
    return out


def pipe_reducers() -> dict:
    """A pickler's dispatch table for the pipe between a grid and its worker processes
    (engine/inprocess.py): a kept array travels as its NumPy values and comes out kept; rows of
    a matrix not taken yet travel as the matrix (once per pickle: pickle's memo) and the row
    numbers, and come out not taken."""
    def kept(a):
        return fast_array, (a._values(),)

    def rows(a):
        nd = a.__dict__.get("_ndarray")
        return (fast_array, (nd,)) if nd is not None else (rows_array, (a.__dict__["_rows"],))

    return {_Kept: kept, _Rows: rows}


def rows_source(a: Array):
    """The RowsOf behind a `rows_array` (no copy), else `peek(a)`."""
    return a.__dict__["_rows"] if isinstance(a, _Rows) and a.__dict__.get("_ndarray") is None else peek(a)


def fast_array(a: np.ndarray) -> Array:
    """Array(a), without Flower's per-argument checks and with its bytes made on demand."""
    a = np.ascontiguousarray(a) if a.ndim else np.array(a)
    out = _Kept.__new__(_Kept)
    # the attributes Array.__init__ and its __setattr__ would set (a dirty record), set directly
    out.__dict__.update(dtype=_dtype_name(a.dtype), shape=tuple(int(d) for d in a.shape), stype=SType.NUMPY,
                        _bytes=None, _is_dirty=True, _ndarray=a)
    return out


def record(arrays: dict) -> ArrayRecord:
    """An ArrayRecord of `fast_array`s (ArrayRecord({...}) would copy each into a plain Array;
    its per-item type checks are skipped: the keys are names this code made, str)."""
    rec = ArrayRecord()
    rec.__dict__["_data"].update((k, rows_array(v) if isinstance(v, RowsOf) else fast_array(v))
                                 for k, v in arrays.items())
    return rec


def metric_record(values: dict) -> MetricRecord:
    """MetricRecord(values) without Flower's per-value type checks (a list's are per element: most
    of an evaluation reply's cost): for the metrics this code computed (Python ints, floats and
    lists of them), which the server screens like any reply (replies.py)."""
    rec = MetricRecord()
    rec.__dict__["_data"].update(values)
    return rec


_PARSED: dict = {}  # a .npy header's bytes -> (dtype, shape, order)


def npy_array(data: bytes) -> np.ndarray:
    """Flower's `bytes_to_ndarray` (np.load of .npy bytes) with each distinct header parsed once:
    np.load reads the header's dict by `ast.literal_eval` for every array. A read-only view of
    `data` (the SecAgg+ server's collect stage only adds it to others); a header of another
    version or with Python objects goes through np.load."""
    if data[:8] != b"\x93NUMPY\x01\x00" or len(data) < 10:
        return np.load(io.BytesIO(data), allow_pickle=False)
    end = 10 + int.from_bytes(data[8:10], "little")
    head = data[10:end]
    meta = _PARSED.get(head)
    if meta is None:
        fp = io.BytesIO(data[:end])
        np.lib.format.read_magic(fp)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        if dtype.hasobject:
            return np.load(io.BytesIO(data), allow_pickle=False)  # (refuses it, as Flower's does)
        meta = (dtype, shape, "F" if fortran else "C")
        if len(_PARSED) < 4096:
            _PARSED[head] = meta
    dtype, shape, order = meta
    count = int(np.prod(shape))
    if len(data) != end + count * dtype.itemsize:
        return np.load(io.BytesIO(data), allow_pickle=False)  # (a truncated array: np.load's error)
    return np.frombuffer(data, dtype, count, end).reshape(shape, order=order)


def peek(a: Array) -> np.ndarray:
    """The NumPy array behind `a` for a reader that does not write to it: a fast array's own
    array (no copy: the cohort engine reads each evaluation message's rows of EASE's B, 0.5 GB a
    round at MovieLens-100k, 15 GB at ML-1M shape), else `a.numpy()`."""
    kept = a.__dict__.get("_ndarray") if isinstance(a, _Kept) else None
    return kept if kept is not None else a.numpy()


def nbytes(a) -> int:
    """len(Array(a).data): the .npy header and the values (a RowsOf: of its rows)."""
    if isinstance(a, RowsOf):
        m = a.matrix
        shape = (len(a.items), *m.shape[1:])
        return len(_header_of(m.dtype, shape)) + int(np.prod(shape)) * m.dtype.itemsize
    a = np.asarray(a)
    return len(_header(a)) + a.nbytes


def same_objects(last, items) -> bool:
    """Whether `items` are the very objects remembered in `last` (identity, not equality: the
    check costs nothing, and equal ones from elsewhere are simply read again). The caches of
    what every client of a round shares in one process key on it."""
    return last is not None and len(last) == len(items) and all(a is b for a, b in zip(last, items))


def count_bytes(rec: ArrayRecord) -> int:
    """rec.count_bytes() (each array's .npy bytes and each key's length), without making the
    bytes of kept arrays (Flower's method asks each for `.data`: a copy of every reply's arrays
    made only to be counted)."""
    total = 0
    for k, v in rec.items():
        kept = isinstance(v, _Kept) and v.__dict__.get("_bytes") is None
        total += (nbytes(rows_source(v)) if kept else len(v.data)) + len(k)
    return total

