"""fedmtl/data/split.py: the per-user 80/20 split of PROTOCOL.md, its export and re-import."""

from __future__ import annotations

import logging
import math
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from fedmtl.data import split as S, synthetic
from fedmtl.data.dataset import Dataset
from fedmtl.errors import DataError


@pytest.fixture(scope="module")
def data() -> Dataset:
    return synthetic.generate(n_users=40, n_items=30, mean_interactions=9, seed=3)


def rows(df: pd.DataFrame) -> list[tuple]:
    return sorted(map(tuple, df[["user", "item", "rating", "ts"]].itertuples(index=False)))


def dataset_with_raw_ids(inter: pd.DataFrame, raw_users, raw_items) -> Dataset:
    """A Dataset over `inter` (dense ids) whose raw ids are `raw_users`/`raw_items`."""
    nu, ni = len(raw_users), len(raw_items)
    return Dataset(name="tiny", interactions=inter, n_users=nu, n_items=ni,
                   user_cat=np.zeros((nu, 1), np.int64), user_cards=[1],
                   item_cat=np.zeros((ni, 1), np.int64), item_cards=[1],
                   item_multi=np.zeros((ni, 1), np.float32),
                   raw_user_ids=np.array(raw_users), raw_item_ids=np.array(raw_items))


def interactions(triples) -> pd.DataFrame:
    df = pd.DataFrame(triples, columns=["user", "item", "rating"])
    df["ts"] = np.arange(len(df), dtype=np.int64) * 10
    return df.astype({"user": np.int64, "item": np.int64, "rating": np.float32})


# --- per_user_split --------------------------------------------------------------------------


def test_train_and_test_are_disjoint_and_cover_the_log(data):
    sp = S.per_user_split(data.interactions, seed=0)
    train = set(zip(sp.train["user"], sp.train["item"]))
    test = set(zip(sp.test["user"], sp.test["item"]))
    assert not train & test
    assert rows(pd.concat([sp.train, sp.test])) == rows(data.interactions)


def test_each_user_gets_floor_80_percent_in_train_and_keeps_both_parts(data):
    sp = S.per_user_split(data.interactions, seed=0)
    n = data.interactions.groupby("user").size()
    n_train = sp.train.groupby("user").size().reindex(n.index, fill_value=0)
    n_test = sp.test.groupby("user").size().reindex(n.index, fill_value=0)
    assert (n_train == np.floor(0.8 * n)).all()
    assert (n_train >= 1).all() and (n_test >= 1).all()
    assert (n_train + n_test == n).all()


@pytest.mark.parametrize("frac", [0.3, 0.5, 0.99])
def test_every_user_keeps_train_and_test_at_any_fraction(frac):
    # 2, 3 and 5 interactions: floor(frac * n) alone could give 0 train or 0 test.
    inter = interactions([(u, i, 3.0) for u, n in enumerate([2, 3, 5]) for i in range(n)])
    sp = S.per_user_split(inter, seed=0, train_frac=frac)
    for u, n in enumerate([2, 3, 5]):
        k = int((sp.train["user"] == u).sum())
        assert 1 <= k <= n - 1
        assert k == min(max(math.floor(frac * n), 1), n - 1)
        assert k + int((sp.test["user"] == u).sum()) == n


def test_users_with_a_single_interaction_are_dropped_with_a_warning(caplog):
    inter = interactions([(0, 0, 4.0), (0, 1, 2.0), (0, 2, 5.0), (1, 0, 3.0), (2, 1, 1.0), (2, 2, 2.0)])
    with caplog.at_level(logging.WARNING, logger="fedmtl.data.split"):
        sp = S.per_user_split(inter, seed=0)
    assert 1 not in set(sp.train["user"]) | set(sp.test["user"])
    assert set(sp.train["user"]) == {0, 2} and set(sp.test["user"]) == {0, 2}
    assert "1 users with fewer than 2 interactions dropped" in caplog.text


def test_same_seed_same_split_other_seed_other_split(data):
    a, b = S.per_user_split(data.interactions, seed=5), S.per_user_split(data.interactions, seed=5)
    pd.testing.assert_frame_equal(a.train, b.train)
    pd.testing.assert_frame_equal(a.test, b.test)
    c = S.per_user_split(data.interactions, seed=6)
    assert rows(a.test) != rows(c.test)


def test_the_split_does_not_depend_on_how_users_are_interleaved_in_the_log(data):
    # The same log ordered by time (users interleaved; each user's rows keep their order).
    by_time = data.interactions.sort_values("ts", kind="stable")
    assert not by_time.index.equals(data.interactions.index)
    assert rows(S.per_user_split(by_time, seed=1).test) == rows(S.per_user_split(data.interactions, seed=1).test)


def test_validation_carve_splits_only_the_train_part(data):
    sp = S.per_user_split(data.interactions, seed=0)
    val = S.carve_validation(sp, seed=1)
    carved = rows(pd.concat([val.train, val.test]))
    train_rows = rows(sp.train)
    assert set(carved) <= set(train_rows)
    assert not set(rows(val.test)) & set(rows(sp.test))


# --- write / read ----------------------------------------------------------------------------


@pytest.fixture
def tiny():
    """Three users, three items, raw ids 11/22/33 and 500/600/700; every test item is also in train."""
    inter = interactions([(0, 0, 5.0), (0, 1, 3.0), (0, 2, 4.0), (1, 0, 2.0), (1, 1, 1.0), (1, 2, 4.5),
                          (2, 2, 3.0), (2, 0, 4.0), (2, 1, 2.0)])
    ds = dataset_with_raw_ids(inter, [11, 22, 33], [500, 600, 700])
    train = inter.iloc[[0, 1, 3, 4, 6, 7, 8]].reset_index(drop=True)
    test = inter.iloc[[2, 5]].reset_index(drop=True)
    return ds, S.Split(train=train, test=test)


def test_write_puts_raw_ids_in_train_tsv_and_test_tsv(tmp_path, tiny):
    ds, sp = tiny
    S.write(sp, ds, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test.tsv", "train.tsv"]
    test_lines = (tmp_path / "test.tsv").read_text().splitlines()
    assert test_lines == ["11\t700\t4\t20", "22\t700\t4.5\t50"]
    assert len((tmp_path / "train.tsv").read_text().splitlines()) == 7


def test_read_gives_back_what_write_wrote(tmp_path, tiny):
    ds, sp = tiny
    S.write(sp, ds, tmp_path)
    back = S.read(tmp_path, ds)
    pd.testing.assert_frame_equal(back.train, sp.train)
    pd.testing.assert_frame_equal(back.test, sp.test)


def test_read_round_trips_a_per_user_split_of_synthetic_data(tmp_path, data):
    sp = S.per_user_split(data.interactions, seed=0)
    S.write(sp, data, tmp_path)
    back = S.read(tmp_path, data)
    assert rows(back.train) == rows(sp.train)
    known = set(sp.train["item"])
    assert rows(back.test) == rows(sp.test[sp.test["item"].isin(known)])


def test_read_drops_test_rows_unseen_in_train_with_a_warning(tmp_path, tiny, caplog):
    ds, sp = tiny
    (tmp_path / "train.tsv").write_text("11\t500\t5\t0\n22\t600\t1\t1\n")
    # user 33 and item 700 never occur in train
    (tmp_path / "test.tsv").write_text("11\t600\t3\t2\n33\t500\t4\t3\n22\t700\t2\t4\n")
    with caplog.at_level(logging.WARNING, logger="fedmtl.data.split"):
        back = S.read(tmp_path, ds)
    assert back.test[["user", "item"]].values.tolist() == [[0, 1]]
    assert "2 test rows" in caplog.text


def test_read_refuses_a_test_split_left_empty_by_that_policy(tmp_path, tiny):
    ds, _ = tiny
    (tmp_path / "train.tsv").write_text("11\t500\t5\t0\n22\t600\t1\t1\n")
    (tmp_path / "test.tsv").write_text("33\t500\t4\t3\n22\t700\t2\t4\n")
    with pytest.raises(DataError) as info:
        S.read(tmp_path, ds)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "test.tsv") in msg and "nothing would be left" in msg


def test_read_rejects_ids_unknown_to_the_data_set(tmp_path, tiny):
    ds, _ = tiny
    (tmp_path / "train.tsv").write_text("11\t500\t5\t0\n44\t600\t1\t1\n")
    (tmp_path / "test.tsv").write_text("11\t600\t3\t2\n")
    with pytest.raises(DataError, match=r"train\.tsv: user id 44 is not in the data set tiny"):
        S.read(tmp_path, ds)


@pytest.mark.parametrize("content, where, what", [
    (b"11\t500\t5\t0\n11 600 3 1\n", 2, "4 tab-separated fields"),
    (b"11\t500\t5\n", 1, "4 tab-separated fields"),
    (b"11\t500\t5\t0\textra\n", 1, "4 tab-separated fields"),
    (b"eleven\t500\t5\t0\n", 1, "must be integers"),
    (b"11\t500\t5\t0.5\n", 1, "must be integers"),
    (b"11\t500\tgood\t0\n", 1, "a number"),
    (b"\n11\t500\t7\t0\n", 2, "outside 1..5"),
    (b"11\t500\t0\t0\n", 1, "outside 1..5"),
])
def test_read_rejects_malformed_lines_naming_file_and_line(tmp_path, tiny, content, where, what):
    ds, _ = tiny
    (tmp_path / "train.tsv").write_bytes(content)
    (tmp_path / "test.tsv").write_text("11\t600\t3\t2\n")
    with pytest.raises(DataError) as info:
        S.read(tmp_path, ds)
    msg = str(info.value)
    assert "\n" not in msg
    assert f"{tmp_path / 'train.tsv'}:{where}:" in msg and what in msg


@pytest.mark.parametrize("case", ["missing", "empty", "undecodable"])
def test_read_rejects_missing_empty_or_undecodable_files(tmp_path, tiny, case):
    ds, _ = tiny
    (tmp_path / "train.tsv").write_text("11\t500\t5\t0\n")
    if case == "empty":
        (tmp_path / "test.tsv").write_text("\n")
    elif case == "undecodable":
        (tmp_path / "test.tsv").write_bytes(b"11\t600\t3\t2\n\xff\xfe\t1\n")
    with pytest.raises(DataError) as info:
        S.read(tmp_path, ds)
    msg = str(info.value)
    assert "\n" not in msg and str(tmp_path / "test.tsv") in msg
    assert {"missing": "not found", "empty": "empty", "undecodable": "UTF-8"}[case] in msg


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["train.tsv", "test.tsv"]),
       edits=st.lists(st.tuples(st.integers(0, 200), st.integers(0, 3),
                                st.sampled_from([b"", b"\t", b"\n", b"x", b"-1", b"9", b"1e3", b"nan", b"\xb2",
                                                 b"\x85", b"\xff", b"99999999999999999999", b" 3 ", b"600"])),
                      min_size=1, max_size=5))
def test_read_of_any_mutated_file_gives_a_split_or_a_data_error(tiny, which, edits):
    ds, sp = tiny
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        S.write(sp, ds, folder)
        content = bytearray((folder / which).read_bytes())
        for pos, cut, token in edits:
            pos %= len(content) + 1
            content[pos:pos + cut] = token
        (folder / which).write_bytes(bytes(content))
        try:
            back = S.read(folder, ds)
        except DataError as e:
            assert "\n" not in str(e)
        else:
            for part in (back.train, back.test):
                assert part["user"].between(0, ds.n_users - 1).all()
                assert part["item"].between(0, ds.n_items - 1).all()
                assert part["rating"].between(1, 5).all()
