"""benchmarks/mf.py: the bare factor references learn a written split's structure, and refuse bad input."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from test_ease_reference import two_taste_split  # the same written split as the EASE reference's tests

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))  # mf.py imports ease.py's split reader
SPEC = importlib.util.spec_from_file_location("mf", BENCH / "mf.py")
mf = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(mf)


def split_of(run: Path) -> "mf.Split":
    sp = run / "split"
    return mf.Split(mf.read_split(sp / "train.tsv"), mf.read_split(sp / "test.tsv"), n_items=60)


@pytest.mark.parametrize("batch", [0, 64])
def test_softmax_mf_learns_the_taste_groups(tmp_path, batch):
    # 12 of each user's 20 taste items are unseen candidates among 52: a random top-10 hits a
    # test item with probability about 0.35 (NDCG about 0.1); the factors find the group
    rows = list(mf.softmax_mf(split_of(two_taste_split(tmp_path)), dim=4, l2=0.01, lr=0.05, steps=60,
                              batch=batch, eval_every=10))
    assert [r[0] for r in rows] == [10, 20, 30, 40, 50, 60]
    assert rows[-1][1] > 0.9 and rows[-1][2] > 0.3


def test_ials_learns_the_taste_groups(tmp_path, capsys):
    run = two_taste_split(tmp_path)
    (it, hr, nd), = list(mf.ials(split_of(run), dim=4, reg=1.0, alpha=5.0, steps=5, eval_every=5))
    assert it == 5 and hr > 0.9 and nd > 0.3
    assert mf.main([str(run), "--model", "ials", "--dim", "4", "--reg", "1", "--steps", "2", "--n-items", "60"]) == 0
    out = capsys.readouterr().out
    assert "| iteration | HR@10 | NDCG@10 |" in out and "best NDCG@10" in out


def test_train_items_and_the_no_item_column_are_never_recommended(tmp_path):
    split = split_of(two_taste_split(tmp_path))
    assert split.mask[:, 0].all()  # ids are 1-based: column 0 is no item
    assert int(split.mask.sum()) == len(split.users) + 8 * len(split.users)


def test_bad_input_is_one_line(tmp_path):
    run = two_taste_split(tmp_path)
    with pytest.raises(SystemExit, match=r"^mf: --n-items 5: the split holds item id 40"):
        mf.main([str(run), "--n-items", "5"])
    with pytest.raises(SystemExit, match=r"^mf: --steps 0: must be >= 1"):
        mf.main([str(run), "--steps", "0"])
    with pytest.raises(SystemExit, match=r"^mf: --batch -1: must be >= 0"):
        mf.main([str(run), "--batch", "-1"])
    (run / "split" / "test.tsv").write_text("1\tstar wars\t5\t0\n")
    with pytest.raises(SystemExit, match=r"^mf: .*test.tsv:1: user, item and ts must be integers"):
        mf.main([str(run)])
