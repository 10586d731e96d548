"""The in-memory form every loader produces: an interaction log plus feature tables."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

COLUMNS = ["user", "item", "rating", "ts"]


@dataclass
class Dataset:
    """Interactions with dense integer ids and the side features of users and items.

    `interactions` has columns user (0..n_users-1), item (0..n_items-1), rating
    (float, 1..5) and ts (int). Features are categorical codes (one column per
    field, cardinalities in `*_cards`) and, for items, a multi-hot matrix (genres).
    """

    name: str
    interactions: pd.DataFrame
    n_users: int
    n_items: int
    user_cat: np.ndarray  # [n_users, F_u] int64
    user_cards: list[int]
    item_cat: np.ndarray  # [n_items, F_i] int64
    item_cards: list[int]
    item_multi: np.ndarray  # [n_items, G] float32
    raw_user_ids: np.ndarray = field(default_factory=lambda: np.empty(0))
    raw_item_ids: np.ndarray = field(default_factory=lambda: np.empty(0))
    labels: list[str] = field(default_factory=list)  # an interaction log's label columns (from_log.py)

    def __post_init__(self) -> None:
        # a log label named "rating" is the rating column itself (from_log wrote its values there)
        extra = [c for c in ("basket", *self.labels) if c in self.interactions.columns and c not in COLUMNS]
        self.interactions = self.interactions[COLUMNS + extra].reset_index(drop=True)
        if self.raw_user_ids.size == 0:
            self.raw_user_ids = np.arange(self.n_users)
        if self.raw_item_ids.size == 0:
            self.raw_item_ids = np.arange(self.n_items)

    def describe(self) -> str:
        return (
            f"{self.name}: {len(self.interactions):,} interactions, "
            f"{self.n_users:,} users, {self.n_items:,} items"
        )
