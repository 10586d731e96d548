"""benchmarks/ease.py: the item-item reference scores a written split, and refuses a bad one."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SPEC = importlib.util.spec_from_file_location("ease", Path(__file__).resolve().parents[1] / "benchmarks" / "ease.py")
ease = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(ease)


def two_taste_split(tmp_path: Path, seed: int = 0) -> Path:
    """Users 1..60 like items 1..20, users 61..120 items 21..40; a fifth of each user's items is test."""
    rng = np.random.default_rng(seed)
    split = tmp_path / "run" / "split"
    split.mkdir(parents=True)
    train, test = [], []
    for u in range(1, 121):
        pool = np.arange(1, 21) if u <= 60 else np.arange(21, 41)
        items = rng.choice(pool, size=10, replace=False)
        train += [(u, i) for i in items[:8]]
        test += [(u, i) for i in items[8:]]
    for name, rows in (("train.tsv", train), ("test.tsv", test)):
        (split / name).write_text("".join(f"{u}\t{i}\t4\t0\n" for u, i in rows))
    return split.parent


def test_ease_ranks_the_users_taste_far_above_chance(tmp_path, capsys):
    run = two_taste_split(tmp_path)
    train, test = ease.read_split(run / "split" / "train.tsv"), ease.read_split(run / "split" / "test.tsv")
    (lam, hr, nd), = ease.evaluate(train, test, [10.0], n_items=60)
    # 12 of each user's 20 taste items are unseen candidates among 52: a random top-10 hits
    # a test item with probability about 0.35; item-item co-occurrence finds the taste group
    assert hr > 0.9 and nd > 0.3
    assert ease.main([str(run), "--lambdas", "10", "--n-items", "60"]) == 0
    assert "| 10 |" in capsys.readouterr().out


def test_a_malformed_split_is_one_line(tmp_path):
    run = two_taste_split(tmp_path)
    (run / "split" / "test.tsv").write_text("1\tstar wars\t5\t0\n")
    with pytest.raises(SystemExit, match=r"^ease: .*test.tsv:1: user, item and ts must be integers"):
        ease.main([str(run)])
    with pytest.raises(SystemExit, match=r"^ease: .*nowhere.*train.tsv: split file not found"):
        ease.main([str(tmp_path / "nowhere")])
    with pytest.raises(SystemExit, match=r"--n-items 5: the split holds item id 40"):
        ease.main([str(two_taste_split(tmp_path / "b")), "--n-items", "5"])
