"""fedmtl/metrics.py: the metrics of PROTOCOL.md, as additive parts and their combination."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedmtl import metrics as M


# --- AUC ------------------------------------------------------------------------------------


def test_auc_exact_counts_ties_as_one_half():
    # positives 0.8, 0.3; negatives 0.8, 0.1. Pairs: (0.8 vs 0.8) tie = 1/2, (0.8 vs 0.1) = 1,
    # (0.3 vs 0.8) = 0, (0.3 vs 0.1) = 1  ->  2.5 / 4
    assert M.auc_exact([1, 0, 1, 0], [0.8, 0.8, 0.3, 0.1]) == pytest.approx(0.625)


def test_auc_exact_extremes_and_undefined_cases():
    assert M.auc_exact([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert M.auc_exact([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert M.auc_exact([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert math.isnan(M.auc_exact([1, 1], [0.2, 0.9]))
    assert math.isnan(M.auc_exact([0, 0], [0.2, 0.9]))


def test_auc_from_histograms_hand_example():
    # bins: positives in 3 and 1, negatives in 1 and 0. Pairs: 3>1, 3>0, (1,1) tie, 1>0 -> 3.5/4
    pos = np.bincount([3, 1], minlength=5)
    neg = np.bincount([1, 0], minlength=5)
    assert M.auc_from_histograms(pos, neg) == pytest.approx(0.875)
    assert math.isnan(M.auc_from_histograms(pos, np.zeros(5)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binned_auc_matches_the_exact_auc(seed):
    rng = np.random.default_rng(seed)
    n = 3000
    labels = rng.random(n) < 0.4
    prob = 1 / (1 + np.exp(-(rng.normal(size=n) + 0.8 * labels)))
    pos, neg = M.histograms(prob, labels)
    assert M.auc_from_histograms(pos, neg) == pytest.approx(M.auc_exact(labels, prob), abs=1e-3)


def test_score_bins_cover_0_to_1_inclusive():
    assert M.score_bins(np.array([0.0, 0.49999, 0.5, 1.0]), bins=4).tolist() == [0, 1, 2, 3]


# --- logloss --------------------------------------------------------------------------------


def test_logloss_sum_by_hand():
    expected = -(math.log(0.9) + math.log(1 - 0.2) + math.log(0.4))
    assert M.logloss_sum(np.array([0.9, 0.2, 0.4]), np.array([1, 0, 1])) == pytest.approx(expected)


def test_logloss_is_finite_for_certain_wrong_predictions():
    assert math.isfinite(M.logloss_sum(np.array([0.0, 1.0]), np.array([1, 0])))


# --- full-ranking HR@10 / NDCG@10 -------------------------------------------------------------


def test_rank_metrics_exclude_train_items_hand_example():
    scores = torch.arange(12, 0, -1, dtype=torch.float32).repeat(3, 1)  # item 0 best, item 11 worst
    train = torch.zeros(3, 12, dtype=torch.bool)
    train[0, [0, 2]] = True
    tests = [np.array([3, 11]), np.array([11]), np.array([], dtype=int)]
    hr, ndcg = M.rank_metrics(scores, train, tests, k=10)
    # user 0: top 10 without 0 and 2 is 1,3,4,...,11: item 3 at rank 2, item 11 at rank 10
    dcg = 1 / math.log2(3) + 1 / math.log2(11)
    idcg = 1 / math.log2(2) + 1 / math.log2(3)
    assert hr.tolist() == [1.0, 0.0, 0.0]  # user 1: item 11 is 12th; user 2 has no test items
    assert ndcg[0] == pytest.approx(dcg / idcg)
    assert ndcg[1] == 0.0 and ndcg[2] == 0.0


def test_rank_metrics_ideal_dcg_caps_at_k():
    scores = torch.arange(20, 0, -1, dtype=torch.float32)[None]
    hr, ndcg = M.rank_metrics(scores, torch.zeros(1, 20, dtype=torch.bool), [np.arange(15)], k=10)
    assert hr[0] == 1.0 and ndcg[0] == pytest.approx(1.0)  # 15 relevant, the top 10 all hit


# --- combine --------------------------------------------------------------------------------


def test_combine_pools_two_clients_parts():
    a = {"rating.n": 2, "rating.se": 2.0, "rating.ae": 2.0,
         "like.n": 2, "like.ll": 1.0, "like.pos_bins": [1500], "like.neg_bins": [500],
         "click.n": 1, "click.hr": 1.0, "click.ndcg": 0.5}
    b = {"rating.n": 2, "rating.se": 8.0, "rating.ae": 4.0,
         "like.n": 2, "like.ll": 3.0, "like.pos_bins": [1000], "like.neg_bins": [1200],
         "click.n": 3, "click.hr": 2.0, "click.ndcg": 0.9}
    out = M.combine([a, b])
    assert out["rating.rmse"] == pytest.approx(math.sqrt(10 / 4))
    assert out["rating.mae"] == pytest.approx(6 / 4)
    # per-client RMSE 1 and 2: numpy's linear percentiles
    assert out["rating.rmse_p10"] == pytest.approx(1.1) and out["rating.rmse_p90"] == pytest.approx(1.9)
    # pooled positives {1500, 1000} vs negatives {500, 1200}: 3 of 4 pairs ordered
    assert out["like.auc"] == pytest.approx(0.75)
    assert out["like.logloss"] == pytest.approx(4 / 4)
    assert out["like.logloss_p10"] == pytest.approx(0.6) and out["like.logloss_p90"] == pytest.approx(1.4)
    assert out["click.hr@10"] == pytest.approx(3 / 4)
    assert out["click.ndcg@10"] == pytest.approx(1.4 / 4)
    assert out["click.ndcg@10_p10"] == pytest.approx(0.3 + 0.1 * (0.5 - 0.3))


def test_combine_reports_only_the_tasks_present():
    out = M.combine([{"rating.n": 1, "rating.se": 4.0, "rating.ae": 2.0}, {}])
    assert set(out) == {"rating.rmse", "rating.mae", "rating.rmse_p10", "rating.rmse_p90"}
    assert out["rating.rmse_p10"] == out["rating.rmse_p90"] == 2.0  # one client with ratings
    assert M.combine([]) == {}


def test_combine_of_client_parts_equals_the_pooled_evaluation():
    """Scoring per client then combining gives the figures of scoring everyone at once."""
    from fedmtl.data import Federation, split, synthetic
    from fedmtl.model import build_model, get_arrays, set_arrays
    from fedmtl.train import evaluate

    ds = synthetic.generate(n_users=30, n_items=25, mean_interactions=8, seed=0)
    fed = Federation(ds, split.per_user_split(ds.interactions, seed=0), num_clients=3, seed=0)
    tasks = ["rating", "click", "like"]
    cfg = {"name": "shared_bottom", "dim": 8, "hidden": 8, "layers": 1}
    everyone = fed.all_data()
    big = build_model(cfg, tasks, len(everyone.users), everyone.user_cat, fed.meta, seed=0)
    with torch.no_grad():  # non-trivial predictions
        for p in big.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
    pooled = M.combine([evaluate(big, everyone, tasks)])
    parts, start = [], 0
    every = [n for n, _ in big.named_parameters()]
    for pid in range(3):
        data = fed.partition_data(pid)
        small = build_model(cfg, tasks, len(data.users), data.user_cat, fed.meta, seed=0)
        arrays = get_arrays(big, every)
        rows = slice(start, start + len(data.users))  # all_data lists the clients' users in order
        arrays["personal.user_emb.weight"] = arrays["personal.user_emb.weight"][rows]
        arrays["personal.user_bias.weight"] = arrays["personal.user_bias.weight"][rows]
        set_arrays(small, arrays)
        parts.append(evaluate(small, data, tasks))
        start += len(data.users)
    combined = M.combine(parts)
    for key in ("rating.rmse", "rating.mae", "like.auc", "like.logloss", "click.hr@10", "click.ndcg@10"):
        assert combined[key] == pytest.approx(pooled[key], rel=1e-5), key


def _rank_metrics_one_user_at_a_time(scores, train_mask, test_lists, k):
    """rank_metrics as written before it was batched: each user on its own."""
    masked = scores if train_mask is None else scores.masked_fill(train_mask, float("-inf"))
    top = torch.topk(masked, k=min(k, masked.shape[1]), dim=1).indices.numpy()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    out = np.zeros((3, len(test_lists)))
    for u, items in enumerate(test_lists):
        if len(items):
            rel = np.isin(top[u], items)
            out[:, u] = (float(rel.any()), float((rel * discounts[:len(rel)]).sum() / discounts[:min(len(items), k)].sum()),
                         float(rel.sum() / len(np.unique(items))))
    return out


@pytest.mark.parametrize("users,items,k", [(300, 200, 10), (4, 6, 10), (20, 30, 3), (0, 10, 10)])
def test_rank_metrics_are_each_users_own_to_the_bit(users, items, k):
    """All users at once give each user's hit, NDCG and recall exactly as one user alone (repeated
    and missing test items included)."""
    rng = np.random.default_rng(users)
    scores = torch.as_tensor(rng.normal(size=(users, items)).astype(np.float32))
    seen = torch.as_tensor(rng.random((users, items)) < 0.2)
    lists = [rng.integers(0, items, rng.integers(0, 12)) for _ in range(users)]
    for mask in (seen, None):
        got = np.stack(M.rank_metrics(scores, mask, lists, k, recall=True)) if users else np.zeros((3, 0))
        np.testing.assert_array_equal(got, _rank_metrics_one_user_at_a_time(scores, mask, lists, k))


@pytest.mark.parametrize("task", ["rating", "like"])
def test_segment_parts_are_each_slices_parts(task):
    """A pair task's parts of clients stacked one after another (the cohort's evaluation) are
    each client's own parts, to the bit."""
    from fedmtl.tasks import get

    t = get(task)
    rng = np.random.default_rng(0)
    s = torch.as_tensor(rng.normal(3, 2, size=400).astype(np.float32))
    y = torch.as_tensor(rng.integers(1, 6, 400).astype(np.float32))
    bounds = np.array([0, 0, 1, 37, 38, 250, 400])
    got = t.segment_parts(s, y, bounds)
    assert len(got) == len(bounds) - 1
    for part, a, b in zip(got, bounds[:-1], bounds[1:]):
        ref = t.parts(s[a:b], y[a:b])
        assert part.keys() == ref.keys()
        assert part == ref


@pytest.mark.parametrize("bad,said", [
    ({"like.n": 0, "like.ll": 0.0, "like.pos_bins": [-5], "like.neg_bins": []}, "hold 1 scores, like.n=0"),
    ({"like.n": 1, "like.ll": 0.1, "like.pos_bins": [2000], "like.neg_bins": []}, "a score bin outside 0..1999"),
    ({"like.n": 1, "like.ll": -0.1, "like.pos_bins": [3], "like.neg_bins": []}, "below 0"),
    ({"rating.n": 1.5, "rating.se": 1.0, "rating.ae": 1.0}, "rating.n=1.5 is not a count"),
    ({"rating.n": 0, "rating.se": 4.0, "rating.ae": 0.0}, "rating.se=4.0 with rating.n=0"),
    ({"click.n": 2, "click.hr": 3.0, "click.ndcg": 1.0}, "click.hr=3.0 outside"),
    ({"valid/click.n": 1, "valid/click.hr": 0.0, "valid/click.ndcg": -0.5}, "valid/click.ndcg=-0.5"),
])
def test_check_part_names_a_part_no_client_can_send(bad, said):
    """Parts that pool alone (a count of 0 skips the rest) but are no client's: named."""
    assert said in M.check_part(bad)


def test_check_part_passes_every_honest_part():
    from fedmtl.tasks import get

    rng = np.random.default_rng(1)
    s, y = torch.as_tensor(rng.normal(size=50).astype(np.float32)), torch.as_tensor(rng.integers(1, 6, 50).astype(np.float32))
    part = {**get("rating").parts(s, y), **get("like").parts(s, y), **{f"valid/{k}": v for k, v in get("like").parts(s, y).items()},
            "click.n": 3, "click.hr": 3.0, "click.ndcg": 3.0, **get("like").empty_parts()}
    part.update(get("like").parts(s, y))
    assert M.check_part(part) is None and M.check_part({**get("rating").empty_parts(), **get("click").empty_parts()}) is None
