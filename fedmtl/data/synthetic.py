"""Synthetic federation with a known shared structure.

Users and items have latent factors; observable features are noisy functions of
those factors; item popularity is skewed. One latent affinity drives all three
behaviours: which items a user interacts with (click), the rating given, and
whether it is liked (rating >= 4), each with its own noise. Sharing an encoder
across tasks therefore helps, which is what a multi-task simulator must be able
to show.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ConfigError
from .dataset import Dataset


def generate(
    n_users: int = 500,
    n_items: int = 300,
    dim: int = 8,
    mean_interactions: float = 30.0,
    n_genres: int = 12,
    n_user_groups: int = 6,
    popularity_skew: float = 1.0,
    affinity_strength: float = 2.0,
    rating_noise: float = 0.5,
    seed: int = 0,
) -> Dataset:
    rng = np.random.default_rng(seed)
    p = rng.normal(size=(n_users, dim)) / np.sqrt(dim)
    q = rng.normal(size=(n_items, dim))
    pop = popularity_skew * rng.normal(size=n_items)

    # Features observable by the model: genres from the item factors, a user group
    # from the user factors (both noisy), and two uninformative-ish fields.
    genre_axes = rng.normal(size=(dim, n_genres))
    genre_score = q @ genre_axes + 0.5 * rng.normal(size=(n_items, n_genres))
    item_multi = (genre_score > np.quantile(genre_score, 0.8, axis=0)).astype(np.float32)
    group_axes = rng.normal(size=(dim, n_user_groups))
    user_group = np.argmax(p @ group_axes + 0.3 * rng.normal(size=(n_users, n_user_groups)), axis=1)
    user_age = rng.integers(0, 7, size=n_users)
    item_era = np.clip(((pop - pop.min()) / (np.ptp(pop) + 1e-9) * 5).astype(int), 0, 4)

    counts = np.maximum(5, rng.poisson(mean_interactions, size=n_users))
    counts = np.minimum(counts, n_items // 2)
    user_bias = 0.3 * rng.normal(size=n_users)
    item_bias = 0.3 * rng.normal(size=n_items)
    # Filled in place, in their final dtypes: 10^5 users' lists of small arrays, stacked and
    # cast, used to leave ~100 MB of allocator fragments behind (benchmarks/speed.py --scale).
    ends = np.cumsum(counts)
    users = np.repeat(np.arange(n_users, dtype=np.int64), counts)
    items_all = np.empty(ends[-1], np.int64)
    ratings = np.empty(ends[-1], np.float32)
    stamps = np.empty(ends[-1], np.int64)
    for u in range(n_users):
        affinity = q @ p[u]
        logits = affinity_strength * affinity + pop
        prob = np.exp(logits - logits.max())
        prob /= prob.sum()
        items = rng.choice(n_items, size=counts[u], replace=False, p=prob)
        raw = 2.6 + affinity[items] + user_bias[u] + item_bias[items]
        rating = np.clip(np.rint(raw + rating_noise * rng.normal(size=items.size)), 1, 5)
        ts = np.sort(rng.integers(0, 10_000_000, size=items.size))
        at = slice(ends[u] - counts[u], ends[u])
        items_all[at], ratings[at], stamps[at] = items, rating, ts
    inter = pd.DataFrame({"user": users, "item": items_all, "rating": ratings, "ts": stamps})
    return Dataset(
        name="synthetic",
        interactions=inter,
        n_users=n_users,
        n_items=n_items,
        user_cat=np.stack([user_group, user_age], axis=1).astype(np.int64),
        user_cards=[n_user_groups, 7],
        item_cat=item_era[:, None].astype(np.int64),
        item_cards=[5],
        item_multi=item_multi,
    )


# the funnel's behaviours: every row a view (ranking over items), then three 0/1 steps
FUNNEL_LABELS = {"view": {"kind": "event", "column": None}, "click": {"kind": "binary", "column": "click"},
                 "cart": {"kind": "binary", "column": "cart"}, "purchase": {"kind": "binary", "column": "purchase"}}


def funnel(click_rate: float = 0.3, cart_rate: float = 0.3, purchase_rate: float = 0.5, step_noise: float = 0.7,
           seed: int = 0, **kw) -> Dataset:
    """A shop's funnel on the synthetic federation (`generate`): each interaction is a view, and
    of the rows that reached a step the `rate` share with the highest hidden interest go on
    (a view is clicked, a click carted, a cart bought): click_rate of the views, then
    cart_rate of the clicks, purchase_rate of the carts (4.5% of the views by default, a
    shop's sparsity). The interest is the rating's standardised score plus fresh noise
    (`step_noise`) at each step, so every behaviour follows the same latent affinity, less
    and less often. Labels: view (every row: a ranking task), click, cart, purchase (0/1)."""
    for key, rate in (("click_rate", click_rate), ("cart_rate", cart_rate), ("purchase_rate", purchase_rate)):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ConfigError(f"dataset.{key}={rate!r}: expected a share in (0, 1]")
    base = generate(seed=seed, **kw)
    inter = base.interactions
    rng = np.random.default_rng([seed, 7])
    r = inter["rating"].to_numpy().astype(np.float64)
    score = (r - r.mean()) / (r.std() + 1e-9)
    reached = np.ones(len(inter), dtype=bool)
    steps = {}
    for name, rate in (("click", click_rate), ("cart", cart_rate), ("purchase", purchase_rate)):
        z = score + step_noise * rng.normal(size=len(inter))
        cut = np.quantile(z[reached], 1.0 - rate) if reached.any() else np.inf
        reached = reached & (z >= cut)
        steps[name] = reached.astype(np.float32)
    out = pd.DataFrame({"user": inter["user"], "item": inter["item"], "rating": np.float32(1.0), "ts": inter["ts"],
                        "view": np.float32(1.0), **steps})
    return Dataset(name="synthetic_funnel", interactions=out, n_users=base.n_users, n_items=base.n_items,
                   user_cat=base.user_cat, user_cards=base.user_cards, item_cat=base.item_cat,
                   item_cards=base.item_cards, item_multi=base.item_multi, labels=list(FUNNEL_LABELS))
