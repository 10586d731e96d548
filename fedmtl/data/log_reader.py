"""The one reader of an interaction log: `read_log(spec)` reads an InteractionLog
(interaction_log.py) from CSV, TSV or Parquet with a column map: its events, labels and user
and item feature tables (the files themselves through log_tables.py). log_layouts.py reads
RecBole's atomic files (`read_recbole`) and the published layouts (`load_layout`, the presets
in `PRESETS`) through it. No Flower here.

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
    labels:    {NAME: {kind: numeric, column: COL}               a number (rating, play time); each client's
                                                                 head starts at its own mean; clip: [LO, HI],
                                                                 the label's known range, bounds its scored predictions
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

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ConfigError, DataError
from .interaction_log import FeatureTable, InteractionLog
from .log_tables import ConcatSrc, Src, Subset, dense, expand, id_tokens, numbers, read_table

log = logging.getLogger(__name__)

LABEL_KINDS = ("numeric", "binary", "event")
RESERVED = ("user", "item", "ts", "basket")
MULTI_HOT_MAX = 2000
SPEC_KEYS = {"name", "file", "root", "format", "sep", "header", "names", "quoting", "nrows",
             "columns", "join", "labels", "user_features", "item_features", "offers", "layout", "path"}
FEATURE_KEYS = {"file", "key", "categorical", "numeric", "multi", "multi_sep", "optional", "format",
                "sep", "header", "names", "quoting"}
JOIN_KEYS = {"file", "on", "columns", "format", "sep", "header", "names", "quoting"}


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
        _check_keys(lab, {"kind", "column", "value", "values", "threshold", "clip"}, f"labels.{name}")
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
        if lab.get("clip") is not None:  # a numeric label's known range: predictions are clipped to it when scored
            clip = lab["clip"]
            ok = (kind == "numeric" and isinstance(clip, (list, tuple)) and len(clip) == 2
                  and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in clip) and clip[0] < clip[1])
            if not ok:
                raise ConfigError(f"labels.{name}.clip={clip!r}: expected [low, high] with low < high, on a numeric label")
            entry["clip"] = [float(clip[0]), float(clip[1])]
        out[str(name)] = entry
    return out


def _label_values(df: pd.DataFrame, name: str, lab: dict, origin: Src) -> np.ndarray:
    col = lab["column"]
    if lab["kind"] == "event" and not col:
        return np.ones(len(df), dtype=np.float32)
    if lab["kind"] == "event":
        text = df[col].astype(str).str.strip()
        hit = text.isin(lab["values"]).to_numpy()
        return hit.astype(np.float32)
    vals = numbers(df, col, origin)
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


def _join(df: pd.DataFrame, origins: dict, jspec: dict, root: Path | None, log_src: Src) -> pd.DataFrame:
    _check_keys(jspec, JOIN_KEYS, "join")
    on, take = jspec.get("on"), list(jspec.get("columns") or [])
    if not on or not take:
        raise ConfigError("join: needs `on` (the key column) and `columns` (the columns to take)")
    path = expand(jspec.get("file"), root)
    if len(path) != 1:
        raise ConfigError(f"join.file={jspec.get('file')!r}: matches {len(path)} files; expected one")
    table, src = read_table(path[0], jspec, [on] + [c for c in take if c != on])
    key = id_tokens(table, on, src)
    dup = key.duplicated().to_numpy()
    if dup.any():
        pos = int(np.argmax(dup))
        raise DataError(f"{src.where(pos)}: {on} {key.iloc[pos]!r} appears twice")
    lkey = id_tokens(df, on, origins.get(on, log_src))
    rows = pd.Index(key.to_numpy()).get_indexer(lkey.to_numpy())
    missing = rows < 0
    if missing.any():
        pos = int(np.argmax(missing))
        raise DataError(f"{origins.get(on, log_src).where(pos)}: {on} {lkey.iloc[pos]!r} is not in {path[0]}")
    df = df.copy()
    for c in take:
        if c != on:
            df[c] = table[c].to_numpy()[rows]
            origins[c] = Src(src.path, src.fmt, src.sep, src.header, src.quoting, rows)
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
    for path in expand(spec.get("file"), root):
        df, src = read_table(path, opts, need, spec.get("nrows"))
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
    vals = numbers(df, col, origin)
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
        users.append(id_tokens(df, cols["user"], origins[cols["user"]]))
        items.append(id_tokens(df, cols["item"], origins[cols["item"]]))
        if cols.get("basket"):
            # a basket id belongs to its user: the same order id of two users is two baskets
            baskets.append(users[-1] + "\x1f" + id_tokens(df, cols["basket"], origins[cols["basket"]]))
        out = {"ts": _timestamps(df, cols, origins.get(cols.get("timestamp")), cols, offset)}
        for lname, lab in labels.items():
            out[lname] = _label_values(df, lname, lab, origins.get(lab["column"]))
        frames.append(pd.DataFrame(out))
        offset += len(df)
    user_tok, item_tok = pd.concat(users, ignore_index=True), pd.concat(items, ignore_index=True)
    ucode, raw_u = dense(user_tok)
    icode, raw_i = dense(item_tok)
    body = pd.concat(frames, ignore_index=True)
    events = pd.DataFrame({"user": ucode, "item": icode, "ts": body["ts"].to_numpy(np.int64)})
    if baskets:
        events["basket"] = dense(pd.concat(baskets, ignore_index=True))[0]
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
            paths = expand(fs["file"], root)
        except DataError:
            if fs.get("optional"):
                return None
            raise
        if len(paths) != 1:
            raise DataError(f"{side}.file={fs['file']!r}: matches {len(paths)} files "
                            f"({', '.join(p.name for p in paths)}); expected one")
        key_col = fs.get("key") or key_col
        table, src = read_table(paths[0], fs, [key_col] + [c for c in cat + num + multi if c != key_col])
        origins = {c: src for c in table.columns}
        key = id_tokens(table, key_col, src)
        dup = key.duplicated().to_numpy()
        if dup.any():
            pos = int(np.argmax(dup))
            raise DataError(f"{src.where(pos)}: {key_col} {key.iloc[pos]!r} appears twice")
    else:  # the log's own columns: the first row of each id
        first = ~log_tokens.duplicated().to_numpy()
        keep = np.flatnonzero(first)
        table = pd.concat([p[0] for p in parts], ignore_index=True)[first].reset_index(drop=True)
        origins = {c: Subset(ConcatSrc(parts, c), keep) for c in table.columns}
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
        vals = numbers(table, c, origins[c], allow_empty=True)
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
