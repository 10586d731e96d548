"""click_mix (fedmtl/itemitem.py): the item Gram federates as a sum of client parts, EASE
ranks co-occurring items first, and the blend moves the click ranking toward it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl import itemitem
from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.metrics import rank_metrics


def random_mask(n_users=30, n_items=12, p=0.3, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_users, n_items, generator=g) < p


def two_tastes(n_per_taste=20) -> torch.Tensor:
    """Half the users have items 0-2 (and sometimes 6), half items 3-5; item 6..9 rare."""
    mask = torch.zeros(2 * n_per_taste, 10, dtype=torch.bool)
    mask[:n_per_taste, :3] = True
    mask[n_per_taste:, 3:6] = True
    mask[::4, 6] = True
    return mask


def test_client_parts_add_up_to_the_pooled_gram():
    mask = random_mask()
    full = np.zeros((12, 12))
    for rows in (slice(0, 7), slice(7, 8), slice(8, 30)):  # three clients of different sizes
        itemitem.add_part(full, *itemitem.gram_part(mask[rows]))
    x = mask.double().numpy()
    np.testing.assert_allclose(full, x.T @ x)
    np.testing.assert_allclose(itemitem.gram(mask), x.T @ x)


def test_a_part_sends_only_the_items_its_users_have():
    mask = torch.zeros(2, 8, dtype=torch.bool)
    mask[0, [1, 4]] = True
    mask[1, 4] = True
    items, block = itemitem.gram_part(mask)
    assert items.tolist() == [1, 4]
    assert block.tolist() == [[1.0, 1.0], [1.0, 2.0]]


@pytest.mark.parametrize("items, block, words", [
    (np.array([0, 1]), np.ones((3, 3)), "block (k, k)"),
    (np.array([0, 12]), np.ones((2, 2)), "outside 0..11"),
    (np.array([-1, 2]), np.ones((2, 2)), "outside 0..11"),
])
def test_a_malformed_part_is_refused(items, block, words):
    with pytest.raises(ValueError, match=words.replace("(", r"\(").replace(")", r"\)")):
        itemitem.add_part(np.zeros((12, 12)), items, block)


def test_ease_solved_on_the_parts_items_equals_ease_on_the_whole_gram():
    mask = random_mask(n_users=4, n_items=15, p=0.25, seed=5)  # a few users: most items unseen
    items, block = itemitem.gram_part(mask)
    assert len(items) < 15
    whole = itemitem.ease(itemitem.gram(mask), 2.0)
    part = itemitem.rows_of_part(items, block, 15, 2.0)
    np.testing.assert_array_equal(part.items.numpy(), items)
    np.testing.assert_allclose(part.rows.numpy(), whole[items], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(part.scores(mask).numpy(), mask.float().numpy() @ whole, rtol=1e-5, atol=1e-6)


def test_rows_give_the_same_scores_as_the_whole_b_and_refuse_users_with_items_they_lack():
    mask = random_mask(n_users=6, n_items=12, p=0.3, seed=2)
    b = itemitem.ease(itemitem.gram(mask), 3.0)
    items, _ = itemitem.gram_part(mask[:3])
    rows = itemitem.Rows.of(b, items)
    assert rows.rows.shape == (len(items), 12)
    np.testing.assert_allclose(rows.scores(mask[:3]).numpy(), mask[:3].float().numpy() @ b, rtol=1e-5, atol=1e-6)
    outside = torch.zeros(1, 12, dtype=torch.bool)
    outside[0, [i for i in range(12) if i not in set(items.tolist())][0]] = True
    with pytest.raises(ValueError, match="miss items these users have"):
        rows.scores(outside)


def test_ease_has_a_zero_diagonal_and_ranks_the_co_occurring_item_first():
    mask = two_tastes()
    b = itemitem.ease(itemitem.gram(mask), lam=1.0)
    assert np.all(np.diag(b) == 0)
    user = torch.zeros(1, 10, dtype=torch.bool)
    user[0, [0, 1]] = True  # has two of the first taste's items
    scores = user.float() @ torch.from_numpy(b)
    ranked = [i for i in scores[0].argsort(descending=True).tolist() if not user[0, i]]
    assert ranked[0] == 2
    assert all(scores[0, 2] > scores[0, j] for j in (3, 4, 5))
    with pytest.raises(ValueError, match="lam must be > 0"):
        itemitem.ease(itemitem.gram(mask), lam=0.0)


def test_standardise_gives_each_row_mean_0_and_std_1_over_its_candidates():
    mask = random_mask(5, 20, seed=3)
    s = torch.randn(5, 20, dtype=torch.float64) * 7 + 3
    z = itemitem.standardise(s, mask)
    keep = ~mask
    for u in range(5):
        v = z[u][keep[u]]
        assert abs(float(v.mean())) < 1e-9
        assert abs(float(v.pow(2).mean().sqrt()) - 1) < 1e-9
        assert torch.all(z[u][mask[u]] == 0)
    assert torch.all(itemitem.standardise(torch.ones(1, 4), torch.zeros(1, 4, dtype=torch.bool)) == 0)


def test_blend_with_weight_0_keeps_the_heads_ranking_and_a_large_weight_fixes_a_wrong_one():
    mask = two_tastes()
    b = itemitem.Rows.of(itemitem.ease(itemitem.gram(mask), lam=1.0))
    # The held-out truth: a first-taste user (who has 0 and 1) clicks 2.
    user = torch.zeros(1, 10, dtype=torch.bool)
    user[0, [0, 1]] = True
    wrong = torch.tensor([[0.0, 0.0, 0.1, 0.2, 0.9, 0.5, 0.3, 0.0, 0.0, 0.0]])  # a head that ranks item 4 first
    kept = itemitem.blend(wrong, user, b, 0.0)
    cand = ~user[0]
    assert torch.equal(kept[0][cand].argsort(), wrong.double()[0][cand].argsort())
    _, nd_head = rank_metrics(wrong, user, [np.array([2])], k=1)
    _, nd_blend = rank_metrics(itemitem.blend(wrong, user, b, 0.8), user, [np.array([2])], k=1)
    assert nd_head[0] == 0.0 and nd_blend[0] == 1.0


def test_click_mix_config_is_checked():
    cfg = compose(["click_mix.weight=0.3"])
    assert cfg["click_mix"] == {"weight": 0.3, "lam": 500.0, "grid_weight": [], "grid_lam": [], "dp_clip": 20.0,
                                "dp_noise_multiplier": 1.0, "secure_gram_mb": 2048, "seq_weight": 0.0, "seq_window": 10, "seq_last": 5,
                                "seq_decay": 0.7}
    assert itemitem.active(cfg) and itemitem.grid(cfg) == []
    assert not itemitem.active(compose(["click_mix.weight=0.3", "tasks=[rating]"]))
    assert not itemitem.active(compose([]))
    for bad, words in (("click_mix.weight=1.0", "must be < 1"), ("click_mix.weight=-0.1", "must be >= 0"),
                       ("click_mix.lam=0", "must be > 0"), ("+click_mix.k=3", "unknown key"),
                       ("click_mix.weight=abc", "expected a number"),
                       ("click_mix.grid_weight=[0,1.0]", r"grid_weight\[1\]=1.0: must be in \[0, 1\)"),
                       ("click_mix.grid_lam=[300,-1]", r"grid_lam\[1\]=-1: must be > 0"),
                       ("click_mix.grid_lam=[a]", r"grid_lam\[0\]='a': expected a number"),
                       ("click_mix.grid_lam=300", "expected a list of numbers"),
                       ("click_mix.grid_weight=[0.1]", "give both")):
        with pytest.raises(ConfigError, match=words):
            compose([bad])
    with pytest.raises(ConfigError, match="privacy=central_dp: the clients' item Gram parts are summed"):
        compose(["click_mix.weight=0.3", "privacy=central_dp"])
    compose(["click_mix.weight=0.3", "privacy=central_dp", "mode=centralized"])  # nothing is sent there
    with pytest.raises(ConfigError, match="click_mix.grid_\\* with privacy=local_dp"):
        compose(["click_mix.grid_weight=[0.1]", "click_mix.grid_lam=[300]", "privacy=local_dp"])
    compose(["click_mix.weight=0.3", "privacy=secagg_dp"])  # a DP Gram (test_dp_gram.py)
    compose(["click_mix.weight=0.3", "privacy=secagg"])  # a SecAgg+ sum of the parts (secure_gram.SecureGram)


def test_the_grid_names_every_weight_and_lam_and_needs_the_gram():
    cfg = compose(["click_mix.grid_weight=[0,0.1]", "click_mix.grid_lam=[300,500.5]"])
    assert not itemitem.active(cfg) and itemitem.needed(cfg)
    assert itemitem.grid(cfg) == [("mix_w0_lam300", 0.0, 300.0), ("mix_w0.1_lam300", 0.1, 300.0),
                                  ("mix_w0_lam500.5", 0.0, 500.5), ("mix_w0.1_lam500.5", 0.1, 500.5)]
    assert itemitem.grid_lams(cfg) == [300.0, 500.5]


@pytest.mark.parametrize("mode", ["centralized", "local"])
def test_a_baseline_scores_the_grid_in_its_final_evaluation_as_metric_groups(tmp_path, mode):
    from fedmtl.simulate import run

    tiny = ["dataset.n_users=40", "dataset.n_items=30", "num_clients=4", "num_rounds=2", "device=cpu",
            f"mode={mode}", "click_mix.lam=5"]
    plain = run(compose(tiny), tmp_path / "plain")["metrics"]
    grid = ["click_mix.weight=0.5", "click_mix.grid_weight=[0,0.5]", "click_mix.grid_lam=[5,50]"]
    mixed = run(compose(tiny + grid), tmp_path / "mixed")["metrics"]
    names = {k.split("/")[0] for k in mixed if k.startswith(itemitem.GRID_PREFIX)}
    assert names == {"mix_w0_lam5", "mix_w0.5_lam5", "mix_w0_lam50", "mix_w0.5_lam50"}
    for key in ("click.ndcg@10", "click.hr@10"):
        assert mixed[f"mix_w0.5_lam5/{key}"] == pytest.approx(mixed[key])  # the run's own blend
        assert mixed[f"mix_w0_lam5/{key}"] == pytest.approx(plain[key])  # weight 0: the head's ranking
        assert mixed[f"mix_w0_lam50/{key}"] == pytest.approx(plain[key])
    assert mixed["rating.rmse"] == plain["rating.rmse"]


def test_ease_is_the_textbook_formula_bit_for_bit():
    """EASE's B = -P / diag(P) off the diagonal, P = (G + lam I)^-1: the same float32 bits however
    the quotients are laid out."""
    rng = np.random.default_rng(3)
    x = (rng.random((60, 40)) < 0.2).astype(np.float64)
    g = x.T @ x
    p = np.linalg.inv(g + 7.0 * np.eye(40))
    want = -p / np.diag(p)
    np.fill_diagonal(want, 0.0)
    assert np.array_equal(itemitem.ease(g, 7.0), want.astype(np.float32))


def test_gram_parts_added_on_two_threads_are_the_serial_sum():
    """add_parts in parallel: each job adds its band of the Gram's rows of every part (items in any
    order), the same whole-count sums as adding the parts one after another; a bad part is refused
    before any is added."""
    rng = np.random.default_rng(5)
    parts = []
    for _ in range(40):
        items = rng.permutation(50)[: rng.integers(1, 30)]  # unique, unsorted
        x = (rng.random((3, len(items))) < 0.6).astype(np.float32)
        parts.append((items, x.T @ x))
    serial = np.zeros((50, 50), np.float32)
    for items, block in parts:
        itemitem.add_part(serial, items, block)
    for parallel in (False, True):
        got = np.zeros((50, 50), np.float32)
        itemitem.add_parts(got, parts, parallel)
        assert np.array_equal(got, serial)
    with pytest.raises(ValueError, match="outside"):
        itemitem.add_parts(np.zeros((50, 50), np.float32), parts + [(np.array([3, 50]), np.ones((2, 2)))], True)
