"""An InteractionLog as the federation's Dataset: the label columns the tasks read, the
feature tables as the model's categorical and multi-hot inputs. No Flower here.

- interactions: user, item, ts (and basket where the log has one), a constant `rating` of
  1.0 (the column the split and the rating-log tasks read; no log task reads it), and one
  float32 column per label of the log, named as the label.
- user_cat / item_cat: the feature tables' categorical codes (0 = unknown), their
  cardinalities; item_multi: the multi-hot columns side by side. Numeric features are not
  model inputs (the towers take codes and multi-hots) and are left out with a warning.
"""

from __future__ import annotations

import logging

import numpy as np

from .dataset import Dataset
from .interaction_log import FeatureTable, InteractionLog

log = logging.getLogger(__name__)


def _cat(table: FeatureTable | None, n: int) -> tuple[np.ndarray, list[int]]:
    if table is None or table.cat.shape[1] == 0:
        return np.zeros((n, 0), np.int64), []
    return table.cat.astype(np.int64), [int(c) for c in table.cards]


def _multi(table: FeatureTable | None, n: int) -> np.ndarray:
    if table is None or not table.multi:
        return np.zeros((n, 0), np.float32)
    return np.concatenate([m.astype(np.float32) for m in table.multi.values()], axis=1)


def to_dataset(lg: InteractionLog) -> Dataset:
    for side, table in (("user", lg.user_features), ("item", lg.item_features)):
        if table is not None and table.num.shape[1]:
            log.warning("%s: %s numeric features %s are not model inputs; left out", lg.name, side, table.num_names)
    ev = lg.events
    inter = ev[["user", "item", "ts"] + (["basket"] if lg.has_basket else [])].copy()
    inter["rating"] = np.float32(1.0)
    for name in lg.labels:
        inter[name] = ev[name].to_numpy().astype(np.float32)
    user_cat, user_cards = _cat(lg.user_features, lg.n_users)
    item_cat, item_cards = _cat(lg.item_features, lg.n_items)
    return Dataset(name=lg.name, interactions=inter, n_users=lg.n_users, n_items=lg.n_items,
                   user_cat=user_cat, user_cards=user_cards, item_cat=item_cat, item_cards=item_cards,
                   item_multi=_multi(lg.item_features, lg.n_items), raw_user_ids=lg.raw_user_ids,
                   raw_item_ids=lg.raw_item_ids, labels=list(lg.labels))
