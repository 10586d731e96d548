"""fedmtl/data/synthetic.py: the offline data set with a known shared structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmtl.data import synthetic

SMALL = dict(n_users=80, n_items=50, mean_interactions=10)


def test_same_seed_same_data():
    a, b = synthetic.generate(**SMALL, seed=4), synthetic.generate(**SMALL, seed=4)
    pd.testing.assert_frame_equal(a.interactions, b.interactions)
    for field in ("user_cat", "item_cat", "item_multi"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))


def test_other_seed_other_data():
    a, b = synthetic.generate(**SMALL, seed=4), synthetic.generate(**SMALL, seed=5)
    assert not a.interactions.equals(b.interactions)


def test_sizes_and_feature_tables():
    ds = synthetic.generate(n_users=30, n_items=24, mean_interactions=6, n_genres=5, n_user_groups=3, seed=0)
    assert ds.name == "synthetic"
    assert (ds.n_users, ds.n_items) == (30, 24)
    assert ds.user_cat.shape == (30, 2) and ds.user_cards == [3, 7]
    assert ds.item_cat.shape == (24, 1) and ds.item_cards == [5]
    assert ds.item_multi.shape == (24, 5)
    assert set(np.unique(ds.item_multi)) <= {0.0, 1.0}
    assert ((ds.user_cat >= 0) & (ds.user_cat < np.array(ds.user_cards))).all()
    assert ((ds.item_cat >= 0) & (ds.item_cat < np.array(ds.item_cards))).all()
    assert ds.raw_user_ids.tolist() == list(range(30)) and ds.raw_item_ids.tolist() == list(range(24))


def test_every_user_has_between_5_and_half_the_items_distinct_interactions():
    ds = synthetic.generate(n_users=60, n_items=30, mean_interactions=25, seed=1)
    inter = ds.interactions
    counts = inter.groupby("user").size()
    assert counts.index.tolist() == list(range(60))
    assert counts.min() >= 5 and counts.max() <= 15
    assert not inter.duplicated(["user", "item"]).any()
    assert inter["item"].between(0, 29).all()


def test_ratings_are_whole_stars_from_1_to_5():
    inter = synthetic.generate(**SMALL, seed=2).interactions
    assert inter["rating"].dtype == np.float32
    assert inter["rating"].between(1, 5).all()
    assert (inter["rating"] == inter["rating"].round()).all()
    assert inter["rating"].nunique() >= 4
    assert inter["user"].dtype == np.int64 and inter["ts"].dtype == np.int64


@pytest.mark.parametrize("seed", [0, 1])
def test_click_and_rating_share_one_affinity(seed):
    # Users pick items by affinity; the rating rises with the same affinity. So when
    # affinity drives the choice, the chosen items are rated (and liked) more; when
    # only popularity drives it, they are not.
    by_affinity = synthetic.generate(**SMALL, affinity_strength=2.0, seed=seed).interactions["rating"]
    by_popularity = synthetic.generate(**SMALL, affinity_strength=0.0, seed=seed).interactions["rating"]
    assert by_affinity.mean() > by_popularity.mean() + 0.5
    assert (by_affinity >= 4).mean() > (by_popularity >= 4).mean() + 0.2


def test_popularity_skew_concentrates_interactions():
    def spread(skew):
        items = synthetic.generate(**SMALL, popularity_skew=skew, seed=0).interactions["item"]
        c = np.bincount(items, minlength=SMALL["n_items"])
        return c.std() / c.mean()

    assert spread(2.0) > 2 * spread(0.0)
