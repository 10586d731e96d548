"""The files of an interaction log read as string columns, with the origin of every row
(`Src`: file, format, line), so that a bad value is one DataError naming its file and line
(`read_table`, `expand` for paths and glob patterns), and the conversions of those columns,
each naming the line of the first bad value (`numbers`, `id_tokens`, `dense`). log_reader.py
builds an InteractionLog from them. No Flower here.

Line numbers count the header and skip blank lines as pandas does; a quoted field spanning
lines counts as one line's worth. Parquet names the row instead.
"""

from __future__ import annotations

import csv
import glob
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError


# --- reading tables with the origin of every row ---------------------------------------------


@dataclass
class Src:
    """Where a table's rows came from, to name the line of a bad value."""

    path: Path
    fmt: str
    sep: str
    header: bool
    quoting: int
    rows: np.ndarray | None = None  # row in the file of each frame row (None: the same)

    def where(self, pos: int) -> str:
        row = int(pos if self.rows is None else self.rows[pos])
        if self.fmt == "parquet":
            return f"{self.path}: row {row + 1}"
        return f"{self.path}:{_line_of(self, row)}"


def _line_of(src: Src, row: int) -> int:
    """The 1-based line of data row `row` (0-based, blank lines skipped, header counted)."""
    with open(src.path, newline="", encoding="utf-8", errors="replace") as fh:
        reader = csv.reader(fh, delimiter=src.sep, quoting=src.quoting)
        seen = -1 if src.header else 0
        for rec in reader:
            if not rec:
                continue
            if seen == row:
                return reader.line_num
            seen += 1
    return row + 1 + int(src.header)


def _fmt_of(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("csv", "tsv", "parquet"):
            raise ConfigError(f"format={fmt!r}: expected csv, tsv or parquet")
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return "parquet"
    if suffix in (".tsv", ".txt", ".inter", ".user", ".item", ".tab"):
        return "tsv"
    return "csv"


def expand(files, root: Path | None) -> list[Path]:
    """Paths from a path, a glob pattern or a list of them; missing files are one DataError."""
    if isinstance(files, (str, Path)):
        files = [files]
    if not files:
        raise ConfigError("file: no log file named")
    out = []
    for f in files:
        p = Path(f)
        if root is not None and not p.is_absolute():
            p = root / p
        if any(c in str(p.name) for c in "*?["):
            matches = sorted(Path(m) for m in glob.glob(str(p)))
            if not matches:
                raise DataError(f"{p.parent}: no file matches {p.name!r}")
            out += matches
        else:
            if not p.is_file():
                raise DataError(f"{p}: file not found")
            out.append(p)
    return out


def read_table(path: Path, opts: dict, needed: list[str], nrows: int | None = None):
    """The `needed` columns of one file as strings ("" where empty) and its Src."""
    fmt = _fmt_of(path, opts.get("format"))
    header = bool(opts.get("header", True))
    names = opts.get("names")
    quoting = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}.get(opts.get("quoting", "minimal"))
    if quoting is None:
        raise ConfigError(f"quoting={opts.get('quoting')!r}: expected minimal or none")
    sep = opts.get("sep") or ("\t" if fmt == "tsv" else ",")
    src = Src(path, fmt, sep, header, quoting)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    if fmt == "parquet":
        try:
            import pyarrow  # noqa: F401
        except ImportError:
            raise DataError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        import pyarrow.parquet as pq

        try:
            present = list(pq.ParquetFile(path).schema_arrow.names)
        except Exception as e:  # noqa: BLE001 (any pyarrow failure: not a Parquet file)
            raise DataError(f"{path}: cannot read as Parquet: {str(e).splitlines()[0]}") from None
        _check_columns(path, needed, present)
        df = pd.read_parquet(path, columns=needed)
        if nrows is not None:
            df = df.iloc[:nrows]
        out = pd.DataFrame({c: df[c].astype("string").fillna("").astype(object) for c in needed})
        if out.empty:
            raise DataError(f"{path}: no rows")
        return out.reset_index(drop=True), src
    read = dict(sep=sep, dtype=str, keep_default_na=False, quoting=quoting, index_col=False,
                skipinitialspace=False)
    try:
        if header:
            present = list(pd.read_csv(path, nrows=0, **read).columns)
        else:
            if not names:
                raise ConfigError(f"{path}: header=false needs `names`, the columns in file order")
            first = pd.read_csv(path, nrows=1, header=None, **read)
            if first.shape[1] != len(names):
                raise DataError(f"{path}:1: expected {len(names)} fields ({', '.join(names)}), "
                                f"found {first.shape[1]}")
            present = list(names)
        _check_columns(path, needed, present)
        df = pd.read_csv(path, usecols=needed, nrows=nrows,
                         **({} if header else {"header": None, "names": list(names)}), **read)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except pd.errors.ParserError as e:
        raise DataError(f"{path}: {' '.join(str(e).split())}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: cannot decode as UTF-8 at byte {e.start}") from None
    if df.empty:
        raise DataError(f"{path}: no data rows (file is empty or has only its header)")
    return df.reset_index(drop=True), src


def _check_columns(path: Path, needed: list[str], present: list[str]) -> None:
    for col in needed:
        if col not in present:
            raise DataError(f"{path}: column {col!r} not found; columns present: {', '.join(map(str, present))}")


class ConcatSrc:
    """The origin of a column over several log files read one after the other."""

    def __init__(self, parts, col):
        self.srcs = [p[1].get(col, p[2]) for p in parts]
        self.ends = np.cumsum([len(p[0]) for p in parts])

    def where(self, pos: int) -> str:
        k = int(np.searchsorted(self.ends, pos, side="right"))
        start = 0 if k == 0 else int(self.ends[k - 1])
        return self.srcs[k].where(pos - start)


class Subset:
    """The origin of some rows of another origin (`keep`: their positions there)."""

    def __init__(self, origin, keep: np.ndarray):
        self.origin, self.keep = origin, keep

    def where(self, pos: int) -> str:
        return self.origin.where(int(self.keep[pos]))


# --- value conversions, each naming the line of the first bad value --------------------------


def numbers(df: pd.DataFrame, col: str, origin: Src, allow_empty: bool = False) -> np.ndarray:
    text = df[col].astype(str).str.strip()
    vals = pd.to_numeric(text.where(text != "", None), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.isnan(vals) & (text != "").to_numpy() | np.isinf(vals)
    if bad.any():
        pos = int(np.argmax(bad))
        raise DataError(f"{origin.where(pos)}: column {col!r} must be a number, got {text.iloc[pos]!r}")
    if not allow_empty and np.isnan(vals).any():
        pos = int(np.argmax(np.isnan(vals)))
        raise DataError(f"{origin.where(pos)}: column {col!r} is empty")
    return vals


_INT_TOKEN = r"[+-]?\d{1,18}(?:\.0*)?"


def id_tokens(df: pd.DataFrame, col: str, origin: Src) -> pd.Series:
    """Canonical id tokens: stripped, integers written without sign noise or ".0"."""
    text = df[col].astype(str).str.strip()
    empty = (text == "").to_numpy()
    if empty.any():
        pos = int(np.argmax(empty))
        raise DataError(f"{origin.where(pos)}: column {col!r} (an id) is empty")
    is_int = text.str.fullmatch(_INT_TOKEN)
    if is_int.any():
        ints = text[is_int].str.replace(r"\.0*$", "", regex=True).astype(np.int64).astype(str)
        text = text.copy()
        text[is_int] = ints
    return text


def dense(tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Dense codes in sorted order of the raw ids, and the raw ids (int64 when all integers)."""
    uniq = pd.unique(tokens)
    try:
        raw = np.sort(np.array(uniq, dtype=object).astype(np.int64))
        numeric = True
    except (ValueError, OverflowError):
        raw = np.sort(np.array(uniq, dtype=str))
        numeric = False
    keys = raw.astype(str) if numeric else raw
    index = pd.Index(keys)
    codes = index.get_indexer(tokens.to_numpy())
    return codes.astype(np.int64), (raw if numeric else raw.astype(object))
