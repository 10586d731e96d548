"""The in-memory form of an interaction log (any behaviours, any layout): `InteractionLog`
and its side-feature tables (`FeatureTable`). No Flower here.

`InteractionLog` is the form every log layout loads into: one row per event with dense ids,
a timestamp (or an order number / file position where the data has no clock), an optional
basket (order or session) id, and one float column per label (behaviour), plus optional user
and item feature tables. Its one reader is log_reader.read_log; log_layouts.py reads the
published layouts through it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd


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
