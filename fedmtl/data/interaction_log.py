"""A generic interaction log (any behaviours, any layout) and its one reader.

`InteractionLog` is the form every log layout loads into: one row per event with dense ids,
a timestamp (or an order number / file position where the data has no clock), an optional
basket (order or session) id, and one float column per label (behaviour), plus optional user
and item feature tables. `read_log(spec)` reads it from CSV, TSV or Parquet with a column map;
log_layouts.py reads RecBole's atomic files (`read_recbole`) and the published layouts
(`load_layout`, the presets in `PRESETS`) through it. No Flower here.

The spec of `read_log` (a plain dict, e.g. a Hydra block; unknown keys are a ConfigError):

    name:      the log's name
    file:      a path, a glob pattern or a list of them (files are read in the listed order,
               each pattern's matches sorted by name, and their rows concatenated)
    root:      the folder that relative paths are taken from (default: the working directory)
    format:    csv | tsv | parquet (default: from the suffix; .tsv, .txt, .inter -> tsv)
    sep:       the field separator (default: "," for csv, tab for tsv)
    header:    true (the first line names the columns) or false (then `names` names them)
    names:     the column names of a file without a header
    quoting:   minimal (default: "..." quotes a field) | none (quotes are plain characters)
    nrows:     read only the first nrows data rows of each file
    columns:   {user: COL, item: COL, timestamp: COL (optional), basket: COL (optional)}
               without a timestamp, ts is the row's position in the log (file order);
               timestamp_format: a strftime format for a timestamp column of dates
    join:      [{file: PATH, on: COL, columns: [COL, ...]}, ...] columns taken from another
               table by a key (each log row's key must be there, once)
    labels:    {NAME: {kind: numeric, column: COL}               a number (rating, play time)
                NAME: {kind: binary, column: COL}                a 0/1 column (0.0/1.0 too)
                NAME: {kind: binary, column: COL, threshold: T}  1 where COL >= T
                NAME: {kind: event, column: COL, value: V}       1 where COL == V (or `values`)
                NAME: {kind: event}}                             every row is one (a purchase log)
    user_features / item_features:
               {file: PATH (absent: taken from the log's own rows, the first row of each id),
                key: COL (default: the user / item column), categorical: [COL, ...],
                numeric: [COL, ...], multi: [COL, ...], multi_sep: " ", optional: false}

Ids (user, item, basket) are tokens: "12" and "12.0" are the same id, and raw ids are recoded
densely in sorted order (numerically when every id is an integer). Categorical features are
coded 1..V in sorted order of the values the log's ids have, 0 for an empty value or an id missing from the
feature file (cardinality V + 1). Numeric features are float32, 0.0 where missing. A multi
column holds several tokens separated by `multi_sep` and becomes a multi-hot [n, V] matrix;
one with more than MULTI_HOT_MAX distinct tokens is skipped with a warning. Rows stay in file
order (the splits break timestamp ties by it).

An event label whose value never occurs is all 0 and logged as a warning (a prefix of a log
may lack a rare event; a misspelt value shows there). Every malformed input is one DataError line naming the file and, where there is one, the
1-based line (Parquet: the row) and the column; a spec that cannot work is a ConfigError.
Line numbers count the header and skip blank lines as pandas does; a quoted field spanning
lines counts as one line's worth.
"""

from __future__ import annotations

import csv
import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError

log = logging.getLogger(__name__)

LABEL_KINDS = ("numeric", "binary", "event")
RESERVED = ("user", "item", "ts", "basket")
MULTI_HOT_MAX = 2000
SPEC_KEYS = {"name", "file", "root", "format", "sep", "header", "names", "quoting", "nrows",
             "columns", "join", "labels", "user_features", "item_features", "offers", "layout", "path"}
FEATURE_KEYS = {"file", "key", "categorical", "numeric", "multi", "multi_sep", "optional", "format",
                "sep", "header", "names", "quoting"}
JOIN_KEYS = {"file", "on", "columns", "format", "sep", "header", "names", "quoting"}


# --- the in-memory form ---------------------------------------------------------------------


@dataclass
class FeatureTable:
    """Side features of users or items, one row per dense id.

    cat: [n, F] int64 codes, 0 = unknown; cards[f] = number of codes of field f (values + 1).
    num: [n, G] float32. multi: name -> [n, V] float32 multi-hot, its tokens in multi_vocab.
    """

    cat: np.ndarray
    cards: list[int]
    cat_names: list[str]
    num: np.ndarray
    num_names: list[str]
    multi: dict[str, np.ndarray] = field(default_factory=dict)
    multi_vocab: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class InteractionLog:
    """Events with dense ids and their labels.

    events: user (0..n_users-1), item (0..n_items-1), ts (int64), basket (int64, dense, only
    when the layout has one), then one float32 column per label in `labels` (name -> {"kind":
    "numeric"|"binary"|"event", "column": source column or None, ...}).
    """

    name: str
    events: pd.DataFrame
    n_users: int
    n_items: int
    labels: dict[str, dict]
    user_features: FeatureTable | None = None
    item_features: FeatureTable | None = None
    raw_user_ids: np.ndarray = field(default_factory=lambda: np.empty(0))
    raw_item_ids: np.ndarray = field(default_factory=lambda: np.empty(0))

    @property
    def has_basket(self) -> bool:
        return "basket" in self.events.columns

    def describe(self) -> str:
        labels = ", ".join(f"{k} ({v['kind']})" for k, v in self.labels.items())
        return (f"{self.name}: {len(self.events):,} events, {self.n_users:,} users, "
                f"{self.n_items:,} items; labels: {labels}")


# --- reading tables with the origin of every row ---------------------------------------------


@dataclass
class _Src:
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


def _line_of(src: _Src, row: int) -> int:
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


def _expand(files, root: Path | None) -> list[Path]:
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


def _read_table(path: Path, opts: dict, needed: list[str], nrows: int | None = None):
    """The `needed` columns of one file as strings ("" where empty) and its _Src."""
    fmt = _fmt_of(path, opts.get("format"))
    header = bool(opts.get("header", True))
    names = opts.get("names")
    quoting = {"minimal": csv.QUOTE_MINIMAL, "none": csv.QUOTE_NONE}.get(opts.get("quoting", "minimal"))
    if quoting is None:
        raise ConfigError(f"quoting={opts.get('quoting')!r}: expected minimal or none")
    sep = opts.get("sep") or ("\t" if fmt == "tsv" else ",")
    src = _Src(path, fmt, sep, header, quoting)
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


# --- value conversions, each naming the line of the first bad value --------------------------


def _numbers(df: pd.DataFrame, col: str, origin: _Src, allow_empty: bool = False) -> np.ndarray:
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


def _tokens(df: pd.DataFrame, col: str, origin: _Src) -> pd.Series:
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


def _dense(tokens: pd.Series) -> tuple[np.ndarray, np.ndarray]:
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


# --- the spec --------------------------------------------------------------------------------


def _check_keys(block: dict, allowed: set, where: str) -> None:
    if not isinstance(block, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(block).__name__}")
    unknown = sorted(set(block) - allowed)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; expected one of {sorted(allowed)}")


def _label_specs(labels) -> dict[str, dict]:
    if not labels:
        return {}
    if not isinstance(labels, dict):
        raise ConfigError(f"labels: expected a mapping of label name -> spec, got {type(labels).__name__}")
    out = {}
    for name, lab in labels.items():
        _check_keys(lab, {"kind", "column", "value", "values", "threshold"}, f"labels.{name}")
        if name in RESERVED:
            raise ConfigError(f"labels.{name}: {name!r} is a reserved column name ({', '.join(RESERVED)})")
        kind = lab.get("kind")
        if kind not in LABEL_KINDS:
            raise ConfigError(f"labels.{name}.kind={kind!r}: expected one of {list(LABEL_KINDS)}")
        col = lab.get("column")
        if kind in ("numeric", "binary") and not col:
            raise ConfigError(f"labels.{name}: kind={kind} needs a column")
        values = lab.get("values", [lab["value"]] if "value" in lab else None)
        if kind == "event" and col and not values:
            raise ConfigError(f"labels.{name}: kind=event with a column needs the event's value")
        entry = {"kind": kind, "column": col}
        if kind == "event" and col:
            entry["values"] = [str(v) for v in values]
        if kind == "binary" and lab.get("threshold") is not None:
            entry["threshold"] = float(lab["threshold"])
        out[str(name)] = entry
    return out


def _label_values(df: pd.DataFrame, name: str, lab: dict, origin: _Src) -> np.ndarray:
    col = lab["column"]
    if lab["kind"] == "event" and not col:
        return np.ones(len(df), dtype=np.float32)
    if lab["kind"] == "event":
        text = df[col].astype(str).str.strip()
        hit = text.isin(lab["values"]).to_numpy()
        return hit.astype(np.float32)
    vals = _numbers(df, col, origin)
    if lab["kind"] == "binary":
        if "threshold" in lab:
            return (vals >= lab["threshold"]).astype(np.float32)
        bad = (vals != 0) & (vals != 1)
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(f"{origin.where(pos)}: column {col!r} (label {name!r}) must be 0 or 1, "
                            f"got {df[col].iloc[pos].strip()!r}")
    return vals.astype(np.float32)


def _columns_needed(spec: dict, cols: dict, labels: dict, joined: set) -> list[str]:
    need = [cols["user"], cols["item"]]
    for key in ("timestamp", "basket"):
        if cols.get(key):
            need.append(cols[key])
    need += [lab["column"] for lab in labels.values() if lab["column"]]
    for side in ("user_features", "item_features"):
        fs = spec.get(side)
        if fs and not fs.get("file"):
            need += list(fs.get("categorical") or []) + list(fs.get("numeric") or []) + list(fs.get("multi") or [])
    seen, out = set(), []
    for c in need:
        if c not in seen and c not in joined:
            seen.add(c)
            out.append(c)
    return out


def _join(df: pd.DataFrame, origins: dict, jspec: dict, root: Path | None, log_src: _Src) -> pd.DataFrame:
    _check_keys(jspec, JOIN_KEYS, "join")
    on, take = jspec.get("on"), list(jspec.get("columns") or [])
    if not on or not take:
        raise ConfigError("join: needs `on` (the key column) and `columns` (the columns to take)")
    path = _expand(jspec.get("file"), root)
    if len(path) != 1:
        raise ConfigError(f"join.file={jspec.get('file')!r}: matches {len(path)} files; expected one")
    table, src = _read_table(path[0], jspec, [on] + [c for c in take if c != on])
    key = _tokens(table, on, src)
    dup = key.duplicated().to_numpy()
    if dup.any():
        pos = int(np.argmax(dup))
        raise DataError(f"{src.where(pos)}: {on} {key.iloc[pos]!r} appears twice")
    lkey = _tokens(df, on, origins.get(on, log_src))
    rows = pd.Index(key.to_numpy()).get_indexer(lkey.to_numpy())
    missing = rows < 0
    if missing.any():
        pos = int(np.argmax(missing))
        raise DataError(f"{origins.get(on, log_src).where(pos)}: {on} {lkey.iloc[pos]!r} is not in {path[0]}")
    df = df.copy()
    for c in take:
        if c != on:
            df[c] = table[c].to_numpy()[rows]
            origins[c] = _Src(src.path, src.fmt, src.sep, src.header, src.quoting, rows)
    return df


def _read_events(spec: dict, root: Path | None, cols: dict, labels: dict):
    """Each log file read, joined and converted; returns the frames and their origins."""
    joins = spec.get("join") or []
    if isinstance(joins, dict):
        joins = [joins]
    joined = {c for j in joins for c in (j.get("columns") or []) if c != j.get("on")}
    need = _columns_needed(spec, cols, labels, joined)
    for j in joins:
        if j.get("on") and j["on"] not in need:
            need.append(j["on"])
    opts = {k: spec.get(k) for k in ("format", "sep", "header", "names", "quoting") if k in spec}
    parts = []
    for path in _expand(spec.get("file"), root):
        df, src = _read_table(path, opts, need, spec.get("nrows"))
        origins = {c: src for c in df.columns}
        for j in joins:
            df = _join(df, origins, j, root, src)
        parts.append((df, origins, src))
    return parts


def _timestamps(df, cols, origin, spec_cols, offset):
    col = cols.get("timestamp")
    if not col:
        return np.arange(offset, offset + len(df), dtype=np.int64)
    fmt = spec_cols.get("timestamp_format")
    if fmt:
        text = df[col].astype(str).str.strip()
        when = pd.to_datetime(text, format=fmt, errors="coerce")
        bad = when.isna().to_numpy()
        if bad.any():
            pos = int(np.argmax(bad))
            raise DataError(f"{origin.where(pos)}: column {col!r} is not a date in format {fmt!r}: "
                            f"{text.iloc[pos]!r}")
        return (when.astype("int64") // 10**9).to_numpy(dtype=np.int64)
    vals = _numbers(df, col, origin)
    return np.floor(vals).astype(np.int64)


def read_log(spec: dict) -> InteractionLog:
    """Read an interaction log described by `spec` (see the module docstring)."""
    _check_keys(spec, SPEC_KEYS, "dataset")
    cols = spec.get("columns") or {}
    _check_keys(cols, {"user", "item", "timestamp", "basket", "timestamp_format"}, "columns")
    for key in ("user", "item"):
        if not cols.get(key):
            raise ConfigError(f"columns.{key}: the column of the {key} id is required")
    labels = _label_specs(spec.get("labels"))
    root = Path(spec["root"]) if spec.get("root") else None
    name = str(spec.get("name") or "log")

    parts = _read_events(spec, root, cols, labels)
    users, items, baskets, frames, offset = [], [], [], [], 0
    for df, origins, _src in parts:
        users.append(_tokens(df, cols["user"], origins[cols["user"]]))
        items.append(_tokens(df, cols["item"], origins[cols["item"]]))
        if cols.get("basket"):
            # a basket id belongs to its user: the same order id of two users is two baskets
            baskets.append(users[-1] + "\x1f" + _tokens(df, cols["basket"], origins[cols["basket"]]))
        out = {"ts": _timestamps(df, cols, origins.get(cols.get("timestamp")), cols, offset)}
        for lname, lab in labels.items():
            out[lname] = _label_values(df, lname, lab, origins.get(lab["column"]))
        frames.append(pd.DataFrame(out))
        offset += len(df)
    user_tok, item_tok = pd.concat(users, ignore_index=True), pd.concat(items, ignore_index=True)
    ucode, raw_u = _dense(user_tok)
    icode, raw_i = _dense(item_tok)
    body = pd.concat(frames, ignore_index=True)
    events = pd.DataFrame({"user": ucode, "item": icode, "ts": body["ts"].to_numpy(np.int64)})
    if baskets:
        events["basket"] = _dense(pd.concat(baskets, ignore_index=True))[0]
    for lname in labels:
        events[lname] = body[lname].to_numpy(np.float32)
    for lname, lab in labels.items():
        if lab["kind"] == "event" and lab["column"] and not events[lname].any():
            # a warning, not an error: a prefix of a log (nrows) may lack a rare event
            present = sorted(pd.unique(pd.concat([p[0][lab["column"]] for p in parts]).str.strip()))[:20]
            log.warning("%s: column %r never has the value %s (label %r, all 0); values present: %s",
                        parts[0][2].path, lab["column"], " or ".join(map(repr, lab["values"])), lname,
                        ", ".join(present))
    feats = {}
    for side, key_col, tokens, raw in (("user_features", cols["user"], user_tok, raw_u),
                                       ("item_features", cols["item"], item_tok, raw_i)):
        fs = spec.get(side)
        if fs:
            feats[side] = _features(side, fs, key_col, tokens, raw, parts, root)
    return InteractionLog(name=name, events=events, n_users=len(raw_u), n_items=len(raw_i), labels=labels,
                          user_features=feats.get("user_features"), item_features=feats.get("item_features"),
                          raw_user_ids=raw_u, raw_item_ids=raw_i)


# --- feature tables --------------------------------------------------------------------------


def _features(side, fs, key_col, log_tokens, raw_ids, parts, root) -> FeatureTable | None:
    _check_keys(fs, FEATURE_KEYS, side)
    cat, num, multi = (list(fs.get(k) or []) for k in ("categorical", "numeric", "multi"))
    if not (cat or num or multi):
        raise ConfigError(f"{side}: name at least one categorical, numeric or multi column")
    keys_wanted = raw_ids.astype(str)
    if fs.get("file"):
        try:
            paths = _expand(fs["file"], root)
        except DataError:
            if fs.get("optional"):
                return None
            raise
        if len(paths) != 1:
            raise DataError(f"{side}.file={fs['file']!r}: matches {len(paths)} files "
                            f"({', '.join(p.name for p in paths)}); expected one")
        key_col = fs.get("key") or key_col
        table, src = _read_table(paths[0], fs, [key_col] + [c for c in cat + num + multi if c != key_col])
        origins = {c: src for c in table.columns}
        key = _tokens(table, key_col, src)
        dup = key.duplicated().to_numpy()
        if dup.any():
            pos = int(np.argmax(dup))
            raise DataError(f"{src.where(pos)}: {key_col} {key.iloc[pos]!r} appears twice")
    else:  # the log's own columns: the first row of each id
        first = ~log_tokens.duplicated().to_numpy()
        keep = np.flatnonzero(first)
        table = pd.concat([p[0] for p in parts], ignore_index=True)[first].reset_index(drop=True)
        origins = {c: _Subset(_ConcatSrc(parts, c), keep) for c in table.columns}
        key = log_tokens[first].reset_index(drop=True)
    rows = pd.Index(key.to_numpy()).get_indexer(keys_wanted)
    found = rows >= 0

    codes, cards = [], []
    for c in cat:
        text = table[c].astype(str).str.strip().to_numpy()
        used = text[rows[found]]  # values of the ids in the log only
        vocab = sorted(set(used[used != ""]))
        index = {v: k + 1 for k, v in enumerate(vocab)}
        per_row = np.array([index.get(v, 0) for v in text], dtype=np.int64)
        codes.append(np.where(found, per_row[np.maximum(rows, 0)], 0))
        cards.append(len(vocab) + 1)
    nums = []
    for c in num:
        vals = _numbers(table, c, origins[c], allow_empty=True)
        col = np.where(found, vals[np.maximum(rows, 0)], np.nan)
        nums.append(np.nan_to_num(col, nan=0.0).astype(np.float32))
    multis, vocabs = {}, {}
    sep = fs.get("multi_sep", " ")
    for c in multi:
        lists = [[t.strip() for t in v.split(sep) if t.strip()] for v in table[c].astype(str)]
        vocab = sorted({t for r in rows[found] for t in lists[r]})
        if len(vocab) > MULTI_HOT_MAX:
            log.warning("%s: multi column %r has %d distinct tokens (> %d): skipped", side, c, len(vocab),
                        MULTI_HOT_MAX)
            continue
        index = {t: k for k, t in enumerate(vocab)}
        mat = np.zeros((len(raw_ids), len(vocab)), dtype=np.float32)
        for dense_id, r in enumerate(rows):
            if r >= 0:
                mat[dense_id, [index[t] for t in lists[r]]] = 1.0
        multis[c], vocabs[c] = mat, vocab
    n = len(raw_ids)
    return FeatureTable(
        cat=np.stack(codes, axis=1) if codes else np.zeros((n, 0), dtype=np.int64), cards=cards, cat_names=cat,
        num=np.stack(nums, axis=1) if nums else np.zeros((n, 0), dtype=np.float32), num_names=num,
        multi=multis, multi_vocab=vocabs)


class _ConcatSrc:
    """The origin of a column over several log files read one after the other."""

    def __init__(self, parts, col):
        self.srcs = [p[1].get(col, p[2]) for p in parts]
        self.ends = np.cumsum([len(p[0]) for p in parts])

    def where(self, pos: int) -> str:
        k = int(np.searchsorted(self.ends, pos, side="right"))
        start = 0 if k == 0 else int(self.ends[k - 1])
        return self.srcs[k].where(pos - start)


class _Subset:
    def __init__(self, origin, keep: np.ndarray):
        self.origin, self.keep = origin, keep

    def where(self, pos: int) -> str:
        return self.origin.where(int(self.keep[pos]))
