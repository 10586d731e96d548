"""Data: loaders, the per-user split, the partition into clients, and each client's slice."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property, lru_cache
import json

import numpy as np
import torch

from ..errors import ConfigError
from . import holdout as holdout_mod, movielens, split as split_mod, synthetic
from .dataset import Dataset
from .from_log import to_dataset
from .holdout import Holdout
from .partition import partition
from .split import Split
from .temporal import recency

log = logging.getLogger(__name__)
LOG_DATASETS = ("instacart", "instacart_sample", "kuairand", "tenrec", "taobao", "retailrocket", "recbole", "log",
                "synthetic_funnel")
DATASETS = ("synthetic", "movielens100k", "movielens1m", *LOG_DATASETS)
GENERATED = ("synthetic", "synthetic_funnel")  # made from the seed: no files, no dataset.path
LOG_KEYS = ("name", "path", "layout", "offers", "nrows")  # of a preset's block; `log` passes the rest to read_log


def load_dataset(dcfg: dict) -> Dataset:
    name = dcfg.get("name")
    if name in GENERATED:  # the funnel: the synthetic federation's views, clicks, carts, purchases
        keys = ("n_users", "n_items", "dim", "mean_interactions", "n_genres", "popularity_skew",
                "affinity_strength", "rating_noise")
        make = synthetic.generate
        if name == "synthetic_funnel":
            keys, make = keys + ("click_rate", "cart_rate", "purchase_rate", "step_noise"), synthetic.funnel
        return make(seed=dcfg.get("seed", 0), **{k: dcfg[k] for k in keys if k in dcfg})
    if name in ("movielens100k", "movielens1m"):
        path = dcfg.get("path")
        if not path:
            raise ConfigError(f"dataset.path: dataset={name} needs the folder of the GroupLens files "
                              f"(e.g. dataset.path=data/ml-100k; get it with fedmtl.data.movielens.download)")
        return movielens.load(path)
    if name in LOG_DATASETS:
        return to_dataset(read_interaction_log(dcfg))
    raise ConfigError(f"dataset={name}: expected one of {list(DATASETS)}")


def read_interaction_log(dcfg: dict):
    """The InteractionLog of a log dataset block (a preset's layout at `path`, or `log`'s read_log spec)."""
    from . import log_layouts, log_reader

    name, layout = dcfg["name"], dcfg.get("layout") or dcfg["name"]
    if layout == "log":
        spec = {k: v for k, v in dcfg.items() if k not in ("layout", "offers", "path") and v is not None}
        return log_reader.read_log(spec)
    if not dcfg.get("path"):
        raise ConfigError(f"dataset.path: dataset={name} needs its files (a folder or the log file)")
    opts = {"nrows": dcfg["nrows"]} if dcfg.get("nrows") else {}
    return log_layouts.load_layout(layout, dcfg["path"], **opts)


@dataclass
class ClientData:
    """One client's users and their train/test interactions (local user index 0..n-1)."""

    users: np.ndarray
    user_cat: np.ndarray
    n_items: int
    train_u: torch.Tensor
    train_i: torch.Tensor
    train_r: torch.Tensor
    test_u: torch.Tensor
    test_i: torch.Tensor
    test_r: torch.Tensor
    cand: dict | None = None  # split=leave_one_out: {"test"|"valid": [users, 1 + N] held-out item, negatives}
    train_y: dict | None = None  # an interaction log's label columns {name: [n_train]} (None: a rating log)
    test_y: dict | None = None
    # each train row's age in its user's history (baskets, or events, after it: data.temporal.recency);
    # ranking.repeat_decay weighs the user's own repeats by decay ** age
    train_age: torch.Tensor | None = None

    def labels(self, on: str = "train", idx=None):
        """What the tasks read of these rows: the rating column, or {label: values} with it under
        "rating" (Task.value picks its column)."""
        r, y = (self.train_r, self.train_y) if on == "train" else (self.test_r, self.test_y)
        if y is None:
            return r if idx is None else r[idx]
        out = {"rating": r, **y}
        return out if idx is None else {k: v[idx] for k, v in out.items()}

    @property
    def n_train(self) -> int:
        return len(self.train_u)

    def to(self, device) -> "ClientData":
        for f in ("train_u", "train_i", "train_r", "test_u", "test_i", "test_r"):
            setattr(self, f, getattr(self, f).to(device))
        if self.train_age is not None:
            self.train_age = self.train_age.to(device)
        if self.cand is not None:
            self.cand = {k: v.to(device) for k, v in self.cand.items()}
        for f in ("train_y", "test_y"):
            if getattr(self, f) is not None:
                setattr(self, f, {k: v.to(device) for k, v in getattr(self, f).items()})
        return self

    def train_mask(self) -> torch.Tensor:
        mask = torch.zeros(len(self.users), self.n_items, dtype=torch.bool, device=self.train_u.device)
        mask[self.train_u, self.train_i] = True
        return mask

    def test_lists(self) -> list[np.ndarray]:
        u, i = self.test_u.cpu().numpy(), self.test_i.cpu().numpy()
        order = np.argsort(u, kind="stable")  # each user's items in file order, as i[u == k] gives them
        return np.split(i[order], np.searchsorted(u[order], np.arange(1, len(self.users))))


class _ByUser:
    """Rows of a split part grouped by user, for cheap per-client slicing."""

    def __init__(self, df, n_users, labels=()):
        order = np.argsort(df["user"].to_numpy(), kind="stable")
        self.u = df["user"].to_numpy()[order]
        self.i = df["item"].to_numpy()[order]
        self.r = df["rating"].to_numpy()[order].astype(np.float32)
        self.y = {k: df[k].to_numpy()[order].astype(np.float32) for k in labels}
        # ages (data.temporal.recency) where the part has timestamps
        self.age = recency(df)[order] if "ts" in df.columns else None
        self.ptr = np.searchsorted(self.u, np.arange(n_users + 1))

    def index(self, users):
        return np.concatenate([np.arange(self.ptr[u], self.ptr[u + 1]) for u in users]) if len(users) else np.empty(0, int)

    def rows(self, idx):
        """(users, items, ratings) of the rows at `idx` (from `index`)."""
        return self.u[idx], self.i[idx], self.r[idx]

    def labels(self, idx):
        """{label: values} of the rows at `idx` (None: a rating log)."""
        if not self.y:
            return None
        return {k: torch.as_tensor(v[idx]) for k, v in self.y.items()}

    def ages(self, idx):
        return None if self.age is None else torch.as_tensor(self.age[idx], dtype=torch.float32)


class Federation:
    """The data of a run: data set, split, and which users each client holds."""

    def __init__(self, dataset: Dataset, split: Split, num_clients: int, seed: int, holdout: Holdout | None = None):
        self.dataset, self.split = dataset, split
        self.holdout = holdout or Holdout()  # new users / items kept out of training (transfer)
        users = np.unique(split.train["user"].to_numpy())
        self.clients = partition(users, num_clients, seed)
        self._train = _ByUser(split.train, dataset.n_users, dataset.labels)
        self._test = _ByUser(split.test, dataset.n_users, dataset.labels)

    @property
    def meta(self) -> dict:
        """What the model is built from: the catalogue's size and item features, the user
        features' sizes."""
        d = self.dataset
        return {"n_items": d.n_items, "user_cards": d.user_cards, "item_cards": d.item_cards,
                "item_cat": d.item_cat, "item_multi": d.item_multi}

    @cached_property
    def bounds(self) -> dict:
        """The two bounds the server checks replies against: the most training examples
        (`max_examples`) and the most users (`max_users`) one client holds."""
        users = self.split.train["user"].to_numpy(np.int64)
        top = max([int(users.max(initial=-1)), *(int(np.max(c, initial=-1)) for c in self.clients)])
        counts = np.bincount(users, minlength=top + 1)  # each user's training rows (one pass, not a reindex a client)
        return {"max_examples": max(int(counts[np.asarray(c, np.int64)].sum()) for c in self.clients),
                "max_users": max(len(c) for c in self.clients)}

    def client_data(self, users: np.ndarray) -> ClientData:
        users = np.asarray(users)
        local = {int(u): k for k, u in enumerate(users)}
        train, test = self._train.index(users), self._test.index(users)  # these users' rows of each part
        tu, ti, tr = self._train.rows(train)
        su, si, sr = self._test.rows(test)
        loc = np.vectorize(local.__getitem__, otypes=[np.int64])
        return ClientData(
            users=users, user_cat=self.dataset.user_cat[users], n_items=self.dataset.n_items,
            train_u=torch.as_tensor(loc(tu) if len(tu) else tu.astype(np.int64)),
            train_i=torch.as_tensor(ti, dtype=torch.long), train_r=torch.as_tensor(tr),
            test_u=torch.as_tensor(loc(su) if len(su) else su.astype(np.int64)),
            test_i=torch.as_tensor(si, dtype=torch.long), test_r=torch.as_tensor(sr),
            cand=None if self.split.candidates is None else
            {k: torch.as_tensor(v[users], dtype=torch.long) for k, v in self.split.candidates.items()},
            train_y=self._train.labels(train), test_y=self._test.labels(test), train_age=self._train.ages(train),
        )

    def partition_data(self, pid: int) -> ClientData:
        if not 0 <= pid < len(self.clients):
            raise ConfigError(f"partition-id {pid}: this federation has {len(self.clients)} clients")
        return self.client_data(self.clients[pid])

    def all_data(self) -> ClientData:
        return self.client_data(np.concatenate(self.clients))


def build_federation(cfg: dict) -> Federation:
    dataset = load_dataset(cfg["dataset"])
    scfg = cfg["split"]
    if scfg["name"] == "leave_one_out":  # the published protocol (loo.py)
        return Federation(dataset, loo_split(cfg, dataset), cfg["num_clients"], cfg["seed"])
    if scfg["name"] == "last_basket":  # repeat consumption (temporal.py)
        return Federation(dataset, basket_split(dataset, bool(scfg.get("validation"))), cfg["num_clients"], cfg["seed"])
    if scfg.get("path"):
        split = split_mod.read(scfg["path"], dataset)
    else:
        split = split_mod.per_user_split(dataset.interactions, seed=scfg["seed"],
                                         train_frac=scfg["train_frac"])
    tcfg = cfg["transfer"]
    holdout = None
    if tcfg["new_users"] or tcfg["new_items"]:
        split, holdout = holdout_mod.hold_out(split, tcfg["new_users"], tcfg["new_items"],
                                              seed=tcfg["seed"] if tcfg["seed"] is not None else cfg["seed"])
    if scfg["validation"]:
        # Tuning mode: the train part is carved again; test is never touched.
        split = split_mod.carve_validation(split, seed=scfg["validation_seed"])
    return Federation(dataset, split, cfg["num_clients"], cfg["seed"], holdout)


def basket_split(dataset: Dataset, validation: bool) -> Split:
    """split=last_basket: each user's last basket test, the rest train; validation=True: the
    second-to-last basket is the test part instead (train without it, the last basket unused)."""
    from .interaction_log import InteractionLog
    from .temporal import last_basket

    if "basket" not in dataset.interactions.columns:
        raise ConfigError(f"split=last_basket: dataset {dataset.name} has no basket column (an order or session id: "
                          "dataset=instacart_sample, instacart, or log with columns.basket); use split=per_user")
    lg = InteractionLog(dataset.name, dataset.interactions, dataset.n_users, dataset.n_items, labels={})
    train, valid, test = last_basket(lg, validation=validation)
    return Split(train=train, test=valid if validation else test)


def loo_split(cfg: dict, dataset: Dataset) -> Split:
    """split=leave_one_out: computed, or taken back from split.path (with its candidates)."""
    from . import loo

    scfg = cfg["split"]
    if scfg.get("path"):
        split = split_mod.read(scfg["path"], dataset, keep_unseen_items=True)
        split.valid = split_mod.read_valid(scfg["path"], dataset)
        split.candidates = split_mod.read_candidates(scfg["path"], dataset, split)
        return split
    split = loo.leave_one_out(dataset.interactions)
    negatives = int(cfg["eval"]["negatives"])
    seed = scfg.get("seed") if scfg.get("seed") is not None else cfg["seed"]
    split.candidates = loo.draw_candidates(split, dataset.n_items, dataset.n_users, negatives, seed)
    return split


@lru_cache(maxsize=2)
def _cached(key: str) -> Federation:
    return build_federation(json.loads(key))


META_FILE = "federation_meta.json"  # written by `python -m fedmtl.deploy.export` beside the partitions
_GIVEN_META: dict[str, dict] = {}  # data key -> a metadata file's content (a deployed ServerApp's)


DATA_KEYS = ("dataset", "split", "num_clients", "seed", "transfer", "eval")  # what a federation is built from


def _data_key(cfg: dict) -> str:
    return json.dumps({k: cfg.get(k) for k in DATA_KEYS}, sort_keys=True, default=str)


def federation_meta(cfg: dict) -> dict:
    """What the server side (the ServerApp, its strategies, reply checks and SecAgg+) may know
    of the federation: `Federation.meta` and `Federation.bounds`, never the interactions.
    Server code reads this, not federation_for (tests/test_layout.py holds it to that). A
    deployed ServerApp given a metadata file (`use_federation_meta`) reads no data at all."""
    given = _GIVEN_META.get(_data_key(cfg))
    if given is not None:
        return given
    fed = federation_for(cfg)
    return {**fed.meta, **fed.bounds}


def write_federation_meta(cfg: dict, path) -> None:
    """`federation_meta(cfg)` as JSON at `path` (what a deployed ServerApp needs instead of
    the data set)."""
    from ..runfiles import write_json

    meta = federation_meta(cfg)
    write_json(path, {k: np.asarray(v).tolist() if isinstance(v, np.ndarray) else v for k, v in meta.items()})


def use_federation_meta(cfg: dict, path) -> dict:
    """Read a metadata file written by `write_federation_meta` and serve it as this
    process's `federation_meta(cfg)`: the server side then never builds the federation."""
    from pathlib import Path

    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        n = int(raw["n_items"])
        meta = {"n_items": n, "user_cards": [int(c) for c in raw["user_cards"]],
                "item_cards": [int(c) for c in raw["item_cards"]],
                "item_cat": np.asarray(raw["item_cat"], dtype=np.int64),
                "item_multi": np.asarray(raw["item_multi"], dtype=np.float32),
                "max_examples": int(raw["max_examples"]), "max_users": int(raw["max_users"])}
        for key in ("item_cat", "item_multi"):
            if meta[key].ndim != 2 or meta[key].shape[0] != n:
                raise ValueError(f"{key} has shape {list(meta[key].shape)}, expected [{n}, columns]")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"federation-meta={path}: not a metadata file of python -m fedmtl.deploy.export "
                          f"({type(e).__name__}: {e})") from None
    _GIVEN_META[_data_key(cfg)] = meta
    return meta


def federation_for(cfg: dict) -> Federation:
    """The federation of `cfg`, built once per process (clients of a simulation share it;
    each client only ever reads its own partition from it)."""
    return _cached(_data_key(cfg))
