"""Users and items kept out of federated training, for the transfer experiments.

- new users (`transfer.new_users=f`): a seeded fraction f of the split's users
  leaves the federation entirely (no client holds them, no train or test row
  names them); their whole log, in timestamp order, is kept aside for the
  cold-start procedure that runs after training (`fedmtl.transfer`).
- new items (`transfer.new_items=f`): a seeded fraction f of the items seen in
  train never appears in train; those train rows move to test, so the hidden
  items are scored from their features and ranked among all items at test time.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .dataset import Dataset
from .split import Split

log = logging.getLogger(__name__)


@dataclass
class Holdout:
    users: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # new users, sorted
    items: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))  # new items, sorted
    user_log: pd.DataFrame | None = None  # every interaction of the new users, by (user, ts)

    def __bool__(self) -> bool:
        return bool(len(self.users) or len(self.items))


def _pick(ids: np.ndarray, frac: float, rng: np.random.Generator) -> np.ndarray:
    n = int(round(frac * len(ids)))
    return np.sort(rng.choice(ids, size=n, replace=False)) if n else np.empty(0, np.int64)


def hold_out(split: Split, new_users: float, new_items: float, seed: int) -> tuple[Split, Holdout]:
    """The split without the new users and without train rows of new items, and what was held out."""
    rng = np.random.default_rng([seed, 9])  # its own stream: the split's draws are unchanged
    train, test = split.train, split.test
    users = _pick(np.unique(np.concatenate([train["user"].to_numpy(), test["user"].to_numpy()])), new_users, rng)
    items = _pick(np.unique(train["item"].to_numpy()), new_items, rng)
    log_ = pd.concat([train[train["user"].isin(users)], test[test["user"].isin(users)]])
    log_ = log_.sort_values(["user", "ts"], kind="stable").reset_index(drop=True)
    train, test = train[~train["user"].isin(users)], test[~test["user"].isin(users)]
    moved = train["item"].isin(items)
    test = pd.concat([test, train[moved]])
    train = train[~moved]
    # A user whose every train row was a new item has nothing to train on: dropped, as the split
    # drops users without train rows (their test rows could never be scored by a client).
    orphans = ~test["user"].isin(set(train["user"]))
    if orphans.any():
        log.warning("new items: %d users left without train rows dropped", test.loc[orphans, "user"].nunique())
        test = test[~orphans]
    test = test.sort_values(["user"], kind="stable")
    return (Split(train=train.reset_index(drop=True), test=test.reset_index(drop=True)),
            Holdout(users=users.astype(np.int64), items=items.astype(np.int64), user_log=log_))


def write(holdout: Holdout, dataset: Dataset, folder: str | Path) -> None:
    """new_users.tsv (their logs, raw ids, user item rating ts) and new_items.txt (raw item ids)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if len(holdout.users):
        lg = holdout.user_log
        out = pd.DataFrame({"user": dataset.raw_user_ids[lg["user"].to_numpy()],
                            "item": dataset.raw_item_ids[lg["item"].to_numpy()],
                            "rating": lg["rating"].to_numpy(), "ts": lg["ts"].to_numpy()})
        tmp = folder / ".new_users.tsv.tmp"
        out.to_csv(tmp, sep="\t", header=False, index=False, float_format="%g")
        tmp.replace(folder / "new_users.tsv")
    if len(holdout.items):
        tmp = folder / ".new_items.txt.tmp"
        tmp.write_text("".join(f"{i}\n" for i in dataset.raw_item_ids[holdout.items]))
        tmp.replace(folder / "new_items.txt")
