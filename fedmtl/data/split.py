"""The per-user train/test split of PROTOCOL.md, and a split's folder: its export and re-import
(train.tsv, test.tsv; under split=leave_one_out also valid.tsv and the candidate files, loo.py).

For each user (in id order) a seeded permutation of that user's interactions
(taken in log order) puts the first floor(frac * n_u) in train and the rest in
test, keeping at least one of each. Users with fewer than two interactions
cannot have both and are dropped with a warning.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ..checks import block, choice, get, number
from ..errors import ConfigError, DataError
from .dataset import COLUMNS, Dataset

log = logging.getLogger(__name__)

PARTS = ("test", "valid")  # split=leave_one_out: the held-out parts with candidate files


@dataclass
class Split:
    train: pd.DataFrame
    test: pd.DataFrame
    valid: pd.DataFrame | None = None  # split=leave_one_out's validation items (loo.py)
    candidates: dict | None = None  # eval.negatives: {"test"|"valid": [n_users, 1 + N] held-out item, negatives}


def per_user_split(inter: pd.DataFrame, seed: int, train_frac: float = 0.8) -> Split:
    """Split each user's interactions; `inter` rows keep their order within a user."""
    rng = np.random.default_rng(seed)
    inter = inter.sort_values(["user"], kind="stable").reset_index(drop=True)
    users, starts, counts = np.unique(inter["user"].to_numpy(), return_index=True, return_counts=True)
    is_train = np.zeros(len(inter), dtype=bool)
    keep = np.ones(len(inter), dtype=bool)
    dropped = 0
    for start, n in zip(starts, counts):
        if n < 2:
            keep[start:start + n] = False
            dropped += 1
            continue
        perm = rng.permutation(n)
        # floor(frac * n), kept within 1..n-1 so every user has train and test at any frac.
        n_train = min(max(int(np.floor(train_frac * n)), 1), n - 1)
        is_train[start + perm[:n_train]] = True
    if dropped:
        log.warning("split: %d users with fewer than 2 interactions dropped", dropped)
    return Split(
        train=inter[keep & is_train].reset_index(drop=True),
        test=inter[keep & ~is_train].reset_index(drop=True),
    )


def carve_validation(split: Split, seed: int, train_frac: float = 0.8) -> Split:
    """A validation carve of the train part, split per user the same way (for tuning)."""
    return per_user_split(split.train, seed=seed, train_frac=train_frac)


def write(split: Split, dataset: Dataset, folder: str | Path) -> None:
    """Write train.tsv and test.tsv with the data set's raw ids (user item rating ts); a
    leave-one-out split also valid.tsv and its candidates (loo.py)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", split.train), ("test", split.test), ("valid", split.valid)):
        if part is None:
            continue
        out = pd.DataFrame({
            "user": dataset.raw_user_ids[part["user"].to_numpy()],
            "item": dataset.raw_item_ids[part["item"].to_numpy()],
            "rating": part["rating"].to_numpy(),
            "ts": part["ts"].to_numpy(),
        })
        tmp = folder / f".{name}.tsv.tmp"
        out.to_csv(tmp, sep="\t", header=False, index=False, float_format="%g")
        tmp.replace(folder / f"{name}.tsv")
    if split.candidates is not None:
        write_candidates(split.candidates, dataset, folder)


def read_part(path: Path) -> pd.DataFrame:
    """One split file (raw ids, user item rating ts); a DataError naming the file and line."""
    if not path.is_file():
        raise DataError(f"{path}: split file not found")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (undecodable byte at offset {e.start})") from None
    rows = []
    for no, line in enumerate(text.split("\n"), 1):  # not splitlines: line numbers as editors count
        line = line.removesuffix("\r")
        if not line.strip():
            continue
        f = line.split("\t")
        if len(f) != 4:
            raise DataError(f"{path}:{no}: expected 4 tab-separated fields (user item rating ts), found {len(f)}")
        try:
            rows.append((int(f[0]), int(f[1]), float(f[2]), int(f[3])))
        except ValueError:
            raise DataError(f"{path}:{no}: user, item and ts must be integers and rating a number: {line!r}") from None
        if not 1.0 <= rows[-1][2] <= 5.0:
            raise DataError(f"{path}:{no}: rating {rows[-1][2]} is outside 1..5")
    if not rows:
        raise DataError(f"{path}: file is empty")
    return pd.DataFrame(rows, columns=COLUMNS)


def read(folder: str | Path, dataset: Dataset, keep_unseen_items: bool = False) -> Split:
    """Load a given train.tsv/test.tsv pair (raw ids of `dataset`).

    Policy: test rows whose user or item never occurs in train are dropped with a
    warning (the model has nothing to score them with); if that leaves no test row,
    or an id is unknown to the data set, it is an error. `keep_unseen_items`: one
    client's own files (a deployed node), whose test items may be trained on by other
    clients, keep those rows.
    """
    folder = Path(folder)
    parts = {}
    umap = {int(u): k for k, u in enumerate(dataset.raw_user_ids)}
    imap = {int(i): k for k, i in enumerate(dataset.raw_item_ids)}
    for name in ("train", "test"):
        path = folder / f"{name}.tsv"
        raw = read_part(path)
        for col, mapping in (("user", umap), ("item", imap)):
            mapped = raw[col].map(mapping)
            if mapped.isna().any():
                bad = raw.loc[mapped.isna(), col].iloc[0]
                raise DataError(f"{path}: {col} id {bad} is not in the data set {dataset.name}")
            raw[col] = mapped.astype(np.int64)
        raw["rating"] = raw["rating"].astype(np.float32)
        parts[name] = raw
    train, test = parts["train"], parts["test"]
    known = test["user"].isin(set(train["user"]))
    if not keep_unseen_items:
        known &= test["item"].isin(set(train["item"]))
    if not known.any():
        raise DataError(f"{folder / 'test.tsv'}: none of its {len(test)} rows has both its user and its item "
                        "in train.tsv; nothing would be left to evaluate")
    if not known.all():
        log.warning("split %s: %d test rows with users or items absent from train dropped",
                    folder, int((~known).sum()))
        test = test[known].reset_index(drop=True)
    return Split(train=train, test=test)


def write_candidates(candidates: dict[str, np.ndarray], dataset: Dataset, folder: str | Path) -> None:
    """test_candidates.tsv / valid_candidates.tsv (raw ids): user, held-out item, negatives."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for p in PARTS:
        cand = candidates[p]
        users = np.flatnonzero(cand[:, 0] >= 0)
        lines = ["\t".join(map(str, [dataset.raw_user_ids[u], *dataset.raw_item_ids[cand[u]]])) for u in users]
        tmp = folder / f".{p}_candidates.tsv.tmp"
        tmp.write_text("".join(line + "\n" for line in lines))
        tmp.replace(folder / f"{p}_candidates.tsv")


def read_candidates(folder: str | Path, dataset: Dataset, split: Split) -> dict[str, np.ndarray]:
    """The candidate files of a split folder back (dense ids); a DataError names the file and line
    of a row that is malformed, of unknown ids, or whose held-out item is not the split's."""
    folder = Path(folder)
    umap = {int(u): k for k, u in enumerate(dataset.raw_user_ids)}
    imap = {int(i): k for k, i in enumerate(dataset.raw_item_ids)}
    out, width = {}, None
    for p in PARTS:
        path = folder / f"{p}_candidates.tsv"
        if not path.is_file():
            raise DataError(f"{path}: candidate file not found (split=leave_one_out with split.path needs "
                            "test_candidates.tsv and valid_candidates.tsv)")
        held = getattr(split, p).drop_duplicates("user").set_index("user")["item"]
        rows = {}
        for no, line in enumerate(path.read_text().split("\n"), 1):
            if not line.strip():
                continue
            f = line.rstrip("\r").split("\t")
            try:
                ids = [int(x) for x in f]
            except ValueError:
                raise DataError(f"{path}:{no}: expected integer ids (user, held-out item, negatives)") from None
            if width is None:
                width = len(ids)
            if len(ids) != width or width < 3:
                raise DataError(f"{path}:{no}: expected {width} fields (user, held-out item, negatives), "
                                f"found {len(ids)}")
            if ids[0] not in umap or any(i not in imap for i in ids[1:]):
                raise DataError(f"{path}:{no}: an id that is not in the data set {dataset.name}")
            u = umap[ids[0]]
            items = [imap[i] for i in ids[1:]]
            if held.get(u) != items[0]:
                raise DataError(f"{path}:{no}: held-out item {ids[1]} is not user {ids[0]}'s {p} item in {p}.tsv")
            rows[u] = items
        cand = np.full((dataset.n_users, width - 1), -1, dtype=np.int64)
        for u, items in rows.items():
            cand[u] = items
        out[p] = cand
    return out


def read_valid(folder: str | Path, dataset: Dataset) -> pd.DataFrame:
    """valid.tsv of a split folder (raw ids) with dense ids."""
    path = Path(folder) / "valid.tsv"
    raw = read_part(path)
    for col, ids in (("user", dataset.raw_user_ids), ("item", dataset.raw_item_ids)):
        mapping = {int(x): k for k, x in enumerate(ids)}
        mapped = raw[col].map(mapping)
        if mapped.isna().any():
            raise DataError(f"{path}: {col} id {raw.loc[mapped.isna(), col].iloc[0]} is not in the data set "
                            f"{dataset.name}")
        raw[col] = mapped.astype(np.int64)
    raw["rating"] = raw["rating"].astype(np.float32)
    return raw


def check_config(cfg: dict) -> None:
    """split=per_user | leave_one_out | last_basket (conf/split/) and eval.negatives
    (data/loo.py): called by `fedmtl.config.validate`."""
    split = get(cfg, "split")
    if not isinstance(split, dict):
        raise ConfigError(f"split={split!r}: expected a block (split=per_user or split=leave_one_out)")
    name = split["name"]
    choice(cfg, "split.name", ("per_user", "leave_one_out", "last_basket"))
    if name == "per_user":
        number(cfg, "split.train_frac", lo=0, hi=1, lo_open=True)
        return
    t = cfg["transfer"]
    if t["new_users"] or t["new_items"]:
        raise ConfigError(f"split={name} with transfer.new_users or transfer.new_items: held-out users and items "
                          "are built on split=per_user only")
    if name == "last_basket":
        if split.get("path"):
            raise ConfigError("split.path with split=last_basket: the split is computed from the log's baskets "
                              "(deterministic); leave split.path empty")
        return
    block(cfg, "eval")
    number(cfg, "eval.negatives", lo=1, integer=True)
    if cfg["split"].get("validation"):
        raise ConfigError("split.validation=true with split=leave_one_out: it holds its own validation item "
                          "(the second latest interaction); the reported round is chosen on it")
