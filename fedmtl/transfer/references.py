"""Reference scorers the transfer evaluations compare against: popularity from the pooled
training log, and seeded random scores (chance level)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn


class Popularity(nn.Module):
    """Scores from the pooled training log (a central reference, not a federated model):
    click by interaction count, rating by the item's mean rating and like by its like rate,
    both shrunk to the global value with `shrink` pseudo-counts (an unseen item gets it)."""

    def __init__(self, train: pd.DataFrame, n_items: int, shrink: float = 5.0):
        super().__init__()
        i = train["item"].to_numpy()
        r = train["rating"].to_numpy().astype(np.float64)
        n = np.bincount(i, minlength=n_items).astype(np.float64)
        mean_r = (np.bincount(i, r, n_items) + shrink * r.mean()) / (n + shrink)
        like = (np.bincount(i, (r >= 4).astype(float), n_items) + shrink * (r >= 4).mean()) / (n + shrink)
        self.s = {"rating": torch.as_tensor(mean_r, dtype=torch.float32),
                  "like": torch.as_tensor(np.log(like / (1 - like)), dtype=torch.float32),
                  "click": torch.as_tensor(np.log1p(n), dtype=torch.float32)}

    def pair_scores(self, users, items):
        return {t: s[items.cpu()] for t, s in self.s.items()}

    def all_item_scores(self, users, task, item_reps=None):
        return self.s[task].expand(len(users), -1)

    def item_reps(self, items=None):
        return None


class RandomScores(nn.Module):
    """Seeded uniform scores: the chance level of every metric."""

    def __init__(self, n_items: int, seed: int = 0):
        super().__init__()
        self.n_items, self.gen = n_items, torch.Generator().manual_seed(seed)

    def pair_scores(self, users, items):
        return {t: torch.rand(len(items), generator=self.gen) * (4 if t == "rating" else 1) + (1 if t == "rating" else -0.5)
                for t in ("rating", "like", "click")}

    def all_item_scores(self, users, task, item_reps=None):
        return torch.rand(len(users), self.n_items, generator=self.gen)

    def item_reps(self, items=None):
        return None
