"""benchmarks/published.py: references scored on a run's own leave-one-out split and candidates,
and fedmtl's rows from run folders."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import published  # noqa: E402

from fedmtl.data import loo, split as split_mod  # noqa: E402
from fedmtl.data.dataset import Dataset  # noqa: E402


def write_split(folder: Path) -> None:
    """4 users, 8 items (raw ids 101..108, users 11..14). Train: item 101 by everyone (the most
    popular), 102 by two users. Each user's test item is 103 or 104; validation 105 or 106."""
    rows = []
    for u in range(4):
        train = [0, 1] if u < 2 else [0]
        rows += [(u, i, 4.0, 10 + k) for k, i in enumerate(train)]
        rows += [(u, 4 + u % 2, 3.0, 50), (u, 2 + u % 2, 5.0, 60)]  # validation then test (latest)
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).astype(
        {"user": np.int64, "item": np.int64, "rating": np.float32, "ts": np.int64})
    ds = Dataset(name="tiny", interactions=inter, n_users=4, n_items=8, user_cat=np.zeros((4, 1), np.int64),
                 user_cards=[1], item_cat=np.zeros((8, 1), np.int64), item_cards=[1],
                 item_multi=np.zeros((8, 1), np.float32), raw_user_ids=np.arange(11, 15),
                 raw_item_ids=np.arange(101, 109))
    sp = loo.leave_one_out(ds.interactions)
    sp.candidates = loo.draw_candidates(sp, 8, 4, 2, seed=0)
    split_mod.write(sp, ds, folder)


def test_the_split_folder_is_read_with_its_raw_ids_and_candidates(tmp_path):
    write_split(tmp_path)
    sp = published.LooSplit(tmp_path)
    assert sp.X[11:15, 101].tolist() == [1, 1, 1, 1] and sp.X[11:15, 102].tolist() == [1, 1, 0, 0]
    assert sp.cand["test"][:, :2].tolist() == [[11, 103], [12, 104], [13, 103], [14, 104]]
    assert sp.cand["valid"][:, :2].tolist() == [[11, 105], [12, 106], [13, 105], [14, 106]]


def test_scores_rank_the_held_out_item_among_its_candidates_with_negatives_ahead_on_ties(tmp_path):
    write_split(tmp_path)
    sp = published.LooSplit(tmp_path)
    scores = np.zeros(sp.X.shape)
    scores[:, 103] = 1.0  # users 11 and 13: their test item beats both negatives -> rank 1
    assert sp.score(scores, "test", k=1) == pytest.approx((0.5, 0.5))
    # all equal: both negatives rank ahead -> rank 3 for everyone
    assert sp.score(np.zeros(sp.X.shape), "test", k=10) == pytest.approx((1.0, 1 / np.log2(4)))
    assert sp.score(np.zeros(sp.X.shape), "test", k=2) == pytest.approx((0.0, 0.0))


def test_fedmtl_rows_read_the_selected_figures_and_seeds(tmp_path):
    for seed, hr in ((0, 0.6), (1, 0.7)):
        run = tmp_path / f"r{seed}"
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"metrics": {"click.hr@10": hr, "click.ndcg@10": hr / 2}}))
        (run / "config.json").write_text(json.dumps({"seed": seed}))
    (tmp_path / "unfinished").mkdir()
    hrs, nds, seeds = published.fedmtl_rows(str(tmp_path / "*"))
    assert (hrs, nds, seeds) == ([0.6, 0.7], [0.3, 0.35], ["0", "1"])
    assert published.fmt(hrs) == "65.00 ± 7.07"


def write_ring_split(folder: Path, n_users=60, n_items=80, length=10, seed=0) -> None:
    """Each user had `length` consecutive items of a ring in time order (test_seq_mix.py's ring):
    only the order tells the item after a user's train segment from the ones before it."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        s = int(rng.integers(0, n_items))
        rows += [(u, (s + k) % n_items, 4.0, 1000 * u + k) for k in range(length)]
    inter = pd.DataFrame(rows, columns=["user", "item", "rating", "ts"]).astype(
        {"user": np.int64, "item": np.int64, "rating": np.float32, "ts": np.int64})
    ds = Dataset(name="ring", interactions=inter, n_users=n_users, n_items=n_items,
                 user_cat=np.zeros((n_users, 1), np.int64), user_cards=[1], item_cat=np.zeros((n_items, 1), np.int64),
                 item_cards=[1], item_multi=np.zeros((n_items, 1), np.float32), raw_user_ids=np.arange(n_users),
                 raw_item_ids=np.arange(n_items))
    sp = loo.leave_one_out(ds.interactions)
    sp.candidates = loo.draw_candidates(sp, n_items, n_users, 30, seed=0)
    split_mod.write(sp, ds, folder)


def test_the_sequence_reference_beats_ease_where_order_tells_the_next_item(tmp_path):
    write_ring_split(tmp_path / "split")
    refs = published.references(tmp_path)
    assert set(refs) == {"popularity", "EASE", "EASE + sequence"}
    assert refs["EASE + sequence"]["ndcg"] > refs["EASE"]["ndcg"] + 0.1
    w = float(refs["EASE + sequence"]["setting"].rsplit("weight ", 1)[1])
    assert w in published.SEQ_WEIGHTS
