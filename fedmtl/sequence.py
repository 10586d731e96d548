"""The sequence score of click_mix (click_mix.seq_weight; itemitem.py blends it): the maths.

    W = sum over users of w_u,  w_u[i, j] = 1 if i != j are within `window` steps in u's train history
    S = W / sqrt((c + 1)(c + 1)^T)     (c: diag(G), each item's user count)
    h_u[i] = decay ** age  for the user's `last` latest items (age 0: the latest)
    score_u = h_u S

A step is an event, or a basket where the log has baskets (data.temporal.recency's ages).
Plain numpy and torch (no Flower): fedmtl's core.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .errors import DataError

NO_TIME = ("click_mix.seq_weight > 0: these interactions have no timestamps to order them by; "
           "set click_mix.seq_weight=0")


@dataclass
class Seq:
    """The sequence score of a blend: S's rows for the client's items, its weight, and how the
    user's history vector h_u is made (its `seq_last` latest items, `seq_decay` ** age)."""

    rows: object  # itemitem.Rows
    weight: float
    last: int
    decay: float


def history(train_u: torch.Tensor, train_i: torch.Tensor, train_age: torch.Tensor | None, n_users: int,
            n_items: int, last: int, decay: float) -> torch.Tensor:
    """h (users x n_items): decay ** age at the items of each user's `last` latest steps (age <
    last; an item seen at several ages: its latest), 0 elsewhere."""
    if train_age is None:
        raise DataError(NO_TIME)
    age = train_age.to(train_u.device).to(torch.float32)
    keep = age < last
    h = torch.zeros(n_users * n_items, dtype=torch.float32, device=train_u.device)
    w = torch.pow(torch.full_like(age[keep], float(decay)), age[keep])
    h.scatter_reduce_(0, train_u[keep] * n_items + train_i[keep], w, reduce="amax")
    return h.view(n_users, n_items)


def window_part(train_u, train_i, train_age, items: np.ndarray, window: int) -> np.ndarray:
    """The windowed Gram part over `items` (this client's train items, `gram_part`'s): block[a, b]
    = how many of its users have items[a] != items[b] within `window` steps (ages) of each other."""
    if train_age is None:
        raise DataError(NO_TIME)
    u, i = train_u.cpu().numpy(), np.searchsorted(items, train_i.cpu().numpy())
    age = train_age.cpu().numpy().astype(np.int64)
    k = len(items)
    order = np.argsort(u, kind="stable")
    bounds = np.searchsorted(u[order], np.arange(int(u.max()) + 2)) if len(u) else [0]
    pairs = [np.zeros(0, np.int64)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        rows = order[a:b]
        if len(rows) < 2:
            continue
        li, ag = i[rows], age[rows]
        x, y = np.nonzero((np.abs(ag[:, None] - ag[None, :]) <= window) & (li[:, None] != li[None, :]))
        pairs.append(np.unique(li[x] * k + li[y]))  # 0/1 per user: a pair counts once however often it recurs
    return np.bincount(np.concatenate(pairs), minlength=k * k).reshape(k, k).astype(np.float32)


def seq_matrix(window_gram: np.ndarray, gram_matrix: np.ndarray) -> np.ndarray:
    """S = W / sqrt((c + 1)(c + 1)^T), c = diag(G) (clamped at 0: a DP Gram's noise), float32."""
    c = np.sqrt(np.clip(np.diag(np.asarray(gram_matrix, np.float64)), 0, None) + 1.0)
    s = np.asarray(window_gram, np.float64) / c[:, None] / c[None, :]
    np.fill_diagonal(s, 0.0)
    return s.astype(np.float32)
