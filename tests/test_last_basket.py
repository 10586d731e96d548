"""split=last_basket with repeat consumption: each user's last basket is test (the one before
it with split.validation=true), earlier items stay candidates with ranking.exclude_seen=false,
and Recall@K is reported beside HR@K and NDCG@K."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from fedmtl import metrics as M
from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.errors import ConfigError
from fedmtl.simulate import run


def write_baskets(path, n_users=12, n_items=20, seed=0):
    """Users buying 4..6 baskets each; item (u % 5) in every basket (a staple, a repeat)."""
    rng = np.random.default_rng(seed)
    rows, oid = [], 0
    for u in range(n_users):
        for b in range(int(rng.integers(4, 7))):
            oid += 1
            items = {u % 5, *rng.choice(n_items, size=3, replace=False).tolist()}
            rows += [{"order_id": oid, "user_id": u, "order_number": b + 1, "product_id": i, "reordered": 0}
                     for i in sorted(items)]
    pd.DataFrame(rows).to_csv(path, index=False)
    return pd.DataFrame(rows)


def overrides(path, *extra):
    return ["dataset=instacart_sample", f"dataset.path={path}", "tasks=[purchase]", "split=last_basket",
            "ranking.exclude_seen=false", "num_clients=12", "num_rounds=2", "local_epochs=1", "save_model=false",
            *extra]


@pytest.mark.parametrize("validation", [False, True])
def test_test_part_is_the_last_basket(tmp_path, validation):
    raw = write_baskets(tmp_path / "df_sample.csv")
    fed = federation_for(compose(overrides(tmp_path / "df_sample.csv", f"split.validation={str(validation).lower()}")))
    last = raw.groupby("user_id")["order_number"].transform("max")
    want = raw[raw["order_number"] == last - (1 if validation else 0)]
    ids = fed.dataset.raw_user_ids
    got = fed.split.test
    assert sorted(zip(ids[got["user"]].astype(int), fed.dataset.raw_item_ids[got["item"]].astype(int))) == \
        sorted(zip(want["user_id"], want["product_id"]))
    # train: every earlier basket (validation: without the validation basket and the last one)
    assert len(fed.split.train) == int((raw["order_number"] < last - (1 if validation else 0)).sum())


def test_repeat_purchase_run_reports_recall(tmp_path):
    write_baskets(tmp_path / "df_sample.csv")
    summary = run(compose(overrides(tmp_path / "df_sample.csv")), tmp_path / "run")
    m = summary["metrics"]
    assert 0.0 <= m["purchase.recall@10"] <= m["purchase.hr@10"] <= 1.0 and 0.0 < m["purchase.ndcg@10"]


def test_rank_metrics_keep_seen_items_with_no_mask():
    scores = torch.tensor([[5.0, 4.0, 3.0, 2.0, 1.0]])
    seen = torch.tensor([[True, False, False, False, False]])
    basket = [np.array([0, 2])]  # item 0 bought before and again
    hr, nd, rc = M.rank_metrics(scores, None, basket, k=2, recall=True)
    assert (hr[0], rc[0]) == (1.0, 0.5) and nd[0] == pytest.approx(1.0 / (1.0 + 1.0 / np.log2(3)))
    hr, nd, rc = M.rank_metrics(scores, seen, basket, k=2, recall=True)  # exclude_seen: item 0 cannot be hit
    assert (hr[0], rc[0]) == (1.0, 0.5) and nd[0] == pytest.approx((1.0 / np.log2(3)) / (1.0 + 1.0 / np.log2(3)))


def test_last_basket_needs_baskets(tmp_path):
    pd.DataFrame({"u": [1, 1, 2, 2], "i": [1, 2, 1, 3]}).to_csv(tmp_path / "log.csv", index=False)
    cfg = compose(["dataset=log", f"dataset.file={tmp_path / 'log.csv'}", "dataset.columns.user=u",
                   "dataset.columns.item=i", "++dataset.labels={buy:{kind:event}}", "tasks=[buy]",
                   "split=last_basket", "num_clients=2"])
    with pytest.raises(ConfigError, match="split=last_basket: dataset log has no basket column"):
        federation_for(cfg)


def test_repeat_weight_ranks_the_users_staples_first(tmp_path):
    """ranking.repeat_weight adds w * log(1 + own count): each user's staple (in every basket,
    so in the test one) then ranks first, a hit for every user; without it the 2-round model
    misses some."""
    write_baskets(tmp_path / "df_sample.csv")
    m = run(compose(overrides(tmp_path / "df_sample.csv", "ranking.repeat_weight=100", "ranking.k=1")),
            tmp_path / "w")["metrics"]
    assert m["purchase.hr@1"] == 1.0 and m["purchase.ndcg@1"] == 1.0
    m0 = run(compose(overrides(tmp_path / "df_sample.csv", "ranking.k=1")), tmp_path / "w0")["metrics"]
    assert m0["purchase.hr@1"] < 1.0


def test_repeat_weight_needs_seen_items(tmp_path):
    write_baskets(tmp_path / "df_sample.csv")
    with pytest.raises(ConfigError, match="ranking.repeat_weight > 0 with ranking.exclude_seen=true"):
        compose([*overrides(tmp_path / "df_sample.csv", "ranking.repeat_weight=1"), "ranking.exclude_seen=true"])


def test_recency_counts_the_baskets_or_events_after_a_row():
    from fedmtl.data.temporal import recency
    ev = pd.DataFrame({"user": [0, 0, 0, 0, 1, 1], "item": [5, 6, 5, 7, 5, 5], "ts": [30, 10, 20, 30, 1, 2],
                       "basket": [3, 1, 2, 3, 9, 8]})
    assert recency(ev).tolist() == [0, 2, 1, 0, 1, 0]  # user 0: baskets 1 < 2 < 3 by ts; user 1: 9 before 8
    # without baskets: the events after it, by ts (ties by log order)
    assert recency(ev.drop(columns="basket")).tolist() == [1, 3, 2, 0, 1, 0]


def write_switch(path, n_users=12):
    """Each user bought product 0 in baskets 1-3, then switched to product 1 (baskets 4-6, the
    last one the test basket); every basket also holds a product bought only that once."""
    rows, oid, filler = [], 0, 2
    for u in range(n_users):
        for b in range(6):
            oid += 1
            for i in (0 if b < 3 else 1, filler):
                rows.append({"order_id": oid, "user_id": u, "order_number": b + 1, "product_id": i, "reordered": 0})
            filler += 1
    pd.DataFrame(rows).to_csv(path, index=False)


def test_repeat_decay_ranks_the_recent_repeat_first(tmp_path):
    """Plain counts rank the abandoned product first (3 purchases against 2): no user's test
    basket is hit at k=1. With ranking.repeat_decay=0.5 the recent product weighs 1 + 0.5
    against 0.5**2 + 0.5**3 + 0.5**4: every user is hit."""
    write_switch(tmp_path / "df_sample.csv")
    plain = run(compose(overrides(tmp_path / "df_sample.csv", "ranking.repeat_weight=100", "ranking.k=1")),
                tmp_path / "plain")["metrics"]
    assert plain["purchase.hr@1"] == 0.0
    decayed = run(compose(overrides(tmp_path / "df_sample.csv", "ranking.repeat_weight=100", "ranking.k=1",
                                    "ranking.repeat_decay=0.5")), tmp_path / "decayed")["metrics"]
    assert decayed["purchase.hr@1"] == 1.0


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.1", "true"])
def test_repeat_decay_must_be_in_zero_one(tmp_path, bad):
    write_switch(tmp_path / "df_sample.csv")
    with pytest.raises(ConfigError, match=f"ranking.repeat_decay={bad if bad != 'true' else 'True'}: expected a "
                                          r"number in \(0, 1\]"):
        compose(overrides(tmp_path / "df_sample.csv", f"ranking.repeat_decay={bad}"))


def test_repeat_decay_without_timestamps_is_a_clear_error():
    from fedmtl.data import ClientData
    from fedmtl.errors import DataError
    from fedmtl.tasks.ranking import Ranking
    from fedmtl.train import repeat_counts
    z = torch.zeros(2, dtype=torch.long)
    data = ClientData(users=np.arange(1), user_cat=np.zeros((1, 0), np.int64), n_items=3, train_u=z,
                      train_i=z, train_r=torch.ones(2), test_u=z, test_i=z, test_r=torch.ones(2))
    task = Ranking("purchase", exclude_seen=False, repeat_weight=1.0, repeat_decay=0.5)
    with pytest.raises(DataError, match="ranking.repeat_decay=0.5: these interactions have no timestamps"):
        repeat_counts(task, data)
    assert repeat_counts(Ranking("purchase", exclude_seen=False, repeat_weight=1.0), data).tolist() == [1.0, 1.0]
