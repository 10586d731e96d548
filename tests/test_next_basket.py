"""benchmarks/next_basket.py: Recall/NDCG by hand, the baselines on logs whose answer is known."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedmtl.data.interaction_log import InteractionLog

SPEC = importlib.util.spec_from_file_location(
    "next_basket", Path(__file__).resolve().parents[1] / "benchmarks" / "next_basket.py")
nb = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(nb)


def basket_log(baskets: dict[int, list[list[int]]], n_items: int) -> InteractionLog:
    """{user: [basket items, ...] in time order} as a log with one basket id per basket."""
    rows, b = [], 0
    for u, seq in baskets.items():
        for t, items in enumerate(seq):
            rows += [(u, i, t, b) for i in items]
            b += 1
    ev = pd.DataFrame(rows, columns=["user", "item", "ts", "basket"]).astype(np.int64)
    ev["purchase"] = np.float32(1.0)
    return InteractionLog(name="toy", events=ev, n_users=len(baskets), n_items=n_items,
                          labels={"purchase": {"kind": "event", "column": None}})


def test_recall_and_ndcg_by_hand():
    scores = -np.arange(12, dtype=float)[None, :]  # ranks items 0, 1, ..., 11
    rec, nd = nb.recall_ndcg(scores, [np.array([0, 11])])
    assert rec[0] == 0.5  # item 0 in the top 10, item 11 not
    assert nd[0] == pytest.approx(1.0 / (1.0 + 1.0 / math.log2(3)))  # ideal: both at ranks 1 and 2
    rec, nd = nb.recall_ndcg(scores, [np.array([1])])
    assert rec[0] == 1.0 and nd[0] == pytest.approx(1.0 / math.log2(3))


def test_ties_rank_the_lower_item_first():
    assert nb.top_k(np.zeros((1, 30)), 10).tolist() == [list(range(10))]
    s = np.array([[0.0, 5.0, 5.0, 1.0, 5.0]])
    assert nb.top_k(s, 3).tolist() == [[1, 2, 4]]


def test_personal_top_frequency_finds_a_user_who_always_buys_the_same():
    # user 0 always buys items 1 and 2; users 1-3 buy the popular 3, 4, 5 (and user 1 once item 2)
    log = basket_log({0: [[1, 2]] * 5, 1: [[3, 4, 5, 2]] + [[3, 4, 5]] * 4, 2: [[3, 4, 5]] * 5,
                      3: [[3, 4, 5, 6]] * 5}, n_items=12)
    out = nb.run(log, grids={"pop": [{}], "topfreq": [{}]})
    by = {r["method"]: r for r in out["results"]}
    assert out["setup"]["test_users"] == 4 and out["setup"]["valid_users"] == 4
    assert by["topfreq"]["test_recall"] == 1.0 and by["topfreq"]["test_ndcg"] == 1.0
    # popularity (train + valid history: 3, 4, 5 bought 12 times, 2 five, 1 and 6 four) ranks
    # 3, 4, 5, 2, 1, 6 for everyone: users 1 and 2 are served perfectly, users 0 and 3 not
    lg2 = math.log2
    user0 = (1 / lg2(5) + 1 / lg2(6)) / (1 + 1 / lg2(3))  # items 2 and 1 at ranks 4 and 5
    user3 = (1 + 1 / lg2(3) + 1 / 2 + 1 / lg2(7)) / (1 + 1 / lg2(3) + 1 / 2 + 1 / lg2(5))  # 6 at rank 6
    assert by["pop"]["test_ndcg"] == pytest.approx((user0 + 1 + 1 + user3) / 4)
    assert by["pop"]["test_recall"] == 1.0  # all within the top 10 of 7 bought items
    # top-frequency breaks user 0's tie (5 each, whole log) by popularity, then back-fills with it
    C = nb.counts(log.events, 4, 12)
    assert nb.top_k(nb.top_frequency(C)[:1], 5).tolist() == [[2, 1, 3, 4, 5]]


def test_decayed_top_frequency_follows_a_user_who_switched():
    # user 0 bought item 1 in three early baskets, then item 2 in the last two before validation
    # and test: plain counts keep ranking 1 first, decayed counts rank 2 first
    log = basket_log({0: [[1], [1], [1], [2], [2], [2]], 1: [[3]] * 6}, n_items=12)
    out = nb.run(log, grids={"topfreq": [{}], "topfreq_decay": [{"decay": 0.9}, {"decay": 0.5}]})
    by = {r["method"]: r for r in out["results"]}
    assert by["topfreq"]["valid_ndcg"] < 1.0  # valid: history 1,1,1,2 -> item 1 first, the basket is [2]
    assert by["topfreq_decay"]["params"] == {"decay": 0.5}  # 0.9: 1 scores 0.729+0.81+0.9 > 2's 1
    assert by["topfreq_decay"]["valid_ndcg"] == 1.0 and by["topfreq_decay"]["test_ndcg"] == 1.0

def test_ease_recommends_the_items_bought_together():
    # items 0-2 are bought together, 3-5 together; user 0's history holds only item 0
    C = np.zeros((41, 6))
    C[1:21, 0:3] = 1
    C[21:41, 3:6] = 1
    C[0, 0] = 1
    s = nb.ease(C, lam=1.0, min_count=1)
    assert set(nb.top_k(s[:1], 2)[0]) == {1, 2}
    # an item below min_count ranks after all the others
    C[0, 5] = 0
    C[21:41, 5] = 0
    C[21, 5] = 1
    s = nb.ease(C, lam=1.0, min_count=2)
    assert nb.top_k(s[:1], 6)[0][-1] == 5


def test_als_conjugate_gradient_reaches_the_exact_solution():
    rng = np.random.default_rng(0)
    C = (rng.random((7, 9)) < 0.4) * rng.integers(1, 4, (7, 9)).astype(float)
    f, reg, alpha = 4, 0.5, 2.0
    X, Y = rng.normal(size=(7, f)), rng.normal(size=(9, f))
    u, i = np.nonzero(C)
    w = alpha * C[u, i]
    got = nb.als_half_step(X, Y, u, i, w, reg, cg_steps=20)
    for r in range(7):
        c = 1.0 + alpha * C[r]
        A = Y.T @ (c[:, None] * Y) + reg * np.eye(f)
        b = Y.T @ (c * (C[r] > 0))
        assert np.allclose(got[r], np.linalg.solve(A, b), atol=1e-8)


def test_als_separates_two_groups():
    C = np.zeros((40, 8))
    C[:20, :4] = 2
    C[20:, 4:] = 2
    s = nb.als(C, factors=4, reg=0.1, alpha=2.0, iters=10, seed=0)
    assert set(nb.top_k(s[:1], 4)[0]) == {0, 1, 2, 3} and set(nb.top_k(s[20:21], 4)[0]) == {4, 5, 6, 7}


def test_main_on_the_synthetic_log_writes_the_table(tmp_path, capsys):
    out = tmp_path / "nb.json"
    assert nb.main(["--synthetic", "--methods", "pop", "topfreq", "ease", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| topfreq | - |" in printed and "| ease | lam=" in printed
    res = json.loads(out.read_text())
    assert [r["method"] for r in res["results"]] == ["pop", "topfreq", "ease"]
    ease = res["results"][2]
    assert len(ease["grid"]) == len(nb.GRIDS["ease"])
    assert ease["valid_ndcg"] == max(g["valid_ndcg"] for g in ease["grid"])
    by = {r["method"]: r for r in res["results"]}
    assert by["topfreq"]["test_ndcg"] > by["pop"]["test_ndcg"]  # the generator's users repeat their favourites


def test_main_refuses_a_missing_file(tmp_path, capsys):
    assert nb.main(["--path", str(tmp_path / "nope.csv")]) == 2
    assert "nope.csv" in capsys.readouterr().err
