"""fedmtl/data/temporal.py: last-basket and last-k splits, their tie rules and their few-events rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fedmtl.data.interaction_log import InteractionLog
from fedmtl.data.log_reader import read_log
from fedmtl.data.temporal import last_basket, last_k
from fedmtl.errors import ConfigError, DataError


def make_log(rows, basket=True) -> InteractionLog:
    cols = ["user", "item", "ts", "basket"] if basket else ["user", "item", "ts"]
    ev = pd.DataFrame(rows, columns=cols).astype(np.int64)
    ev["purchase"] = np.float32(1.0)
    ev["tag"] = np.arange(len(ev), dtype=np.float32)  # the row's position, to name rows in asserts
    return InteractionLog(name="toy", events=ev, n_users=int(ev["user"].max()) + 1,
                          n_items=int(ev["item"].max()) + 1, labels={"purchase": {"kind": "event", "column": None}})


def tags(frame: pd.DataFrame) -> list[int]:
    return frame["tag"].astype(int).tolist()


def test_last_basket_is_test_and_the_one_before_valid():
    lg = make_log([
        # user 0: four baskets, rows not in time order
        (0, 1, 30, 103), (0, 2, 10, 101), (0, 3, 40, 104), (0, 1, 20, 102), (0, 4, 40, 104), (0, 5, 10, 101),
        # user 1: two baskets -> train and test, no validation basket
        (1, 1, 5, 201), (1, 2, 6, 202),
        # user 2: one basket -> train only
        (2, 3, 1, 301), (2, 4, 1, 301),
    ])
    train, valid, test = last_basket(lg)
    assert tags(test) == [2, 4, 7]  # user 0's basket 104 (ts 40), user 1's 202
    assert tags(valid) == [0]  # user 0's basket 103 (ts 30)
    assert tags(train) == [1, 3, 5, 6, 8, 9]
    assert len(train) + len(valid) + len(test) == len(lg.events)
    train, valid, test = last_basket(lg, validation=False)
    assert valid.empty and tags(train) == [0, 1, 3, 5, 6, 8, 9]


def test_baskets_with_the_same_ts_are_ordered_by_their_first_row():
    lg = make_log([(0, 1, 7, 11), (0, 2, 7, 12), (0, 3, 7, 11), (0, 4, 7, 13)])
    train, valid, test = last_basket(lg)
    assert tags(test) == [3] and tags(valid) == [1] and tags(train) == [0, 2]


def test_a_basket_is_placed_by_its_earliest_ts():
    lg = make_log([(0, 1, 5, 1), (0, 2, 9, 1), (0, 3, 6, 2), (0, 4, 7, 3)])
    # basket 1 starts at 5, basket 2 at 6, basket 3 at 7: 3 is last although basket 1 reaches 9
    train, valid, test = last_basket(lg)
    assert tags(test) == [3] and tags(valid) == [2] and tags(train) == [0, 1]


def test_last_basket_needs_a_basket_column():
    lg = make_log([(0, 1, 5), (0, 2, 6)], basket=False)
    with pytest.raises(DataError, match="no basket column"):
        last_basket(lg)


def test_last_k_ties_by_log_order_and_few_event_rules():
    lg = make_log([
        (0, 1, 3), (0, 2, 1), (0, 3, 5), (0, 4, 5), (0, 5, 2),  # user 0: 5 events, ts 5 twice
        (1, 1, 1), (1, 2, 2), (1, 3, 3),  # user 1: 3 events (k < n <= 2k): train 1, test 2
        (2, 1, 1), (2, 2, 2),  # user 2: 2 events (n <= k): train only
    ], basket=False)
    train, valid, test = last_k(lg, 2)
    # user 0 by ts: rows 1 (1), 4 (2), 0 (3), 2 (5), 3 (5, later in the file) -> test 2 and 3
    assert tags(test) == [2, 3, 6, 7]
    assert tags(valid) == [0, 4]
    assert tags(train) == [1, 5, 8, 9]
    train, valid, test = last_k(lg, 1, validation=False)
    assert valid.empty and tags(test) == [3, 7, 9]


@pytest.mark.parametrize("k", [0, -1, 1.5, True])
def test_last_k_refuses_a_bad_k(k):
    with pytest.raises(ConfigError, match="positive integer"):
        last_k(make_log([(0, 1, 1)], basket=False), k)


def test_last_basket_on_a_read_instacart_sample(tmp_path):
    path = tmp_path / "df_sample.csv"
    path.write_text(",order_id,user_id,order_number,order_dow,order_hour_of_day,days_since_prior_order,"
                    "product_id,add_to_cart_order,reordered\n"
                    "0,903,1,3,2,8,,196,1.0,1.0\n1,901,1,1,2,8,,196,1.0,0.0\n2,901,1,1,2,8,,12,2.0,0.0\n"
                    "3,902,1,2,2,8,,12,1.0,1.0\n4,904,1,4,2,8,,196,1.0,1.0\n4,904,1,4,2,8,,7,2.0,0.0\n")
    from fedmtl.data.log_layouts import preset_spec

    train, valid, test = last_basket(read_log(preset_spec("instacart_sample", path)))
    # order numbers 4 (test), 3 (valid), 1 and 2 (train); items 7, 12, 196 are dense 0, 1, 2
    assert sorted(test["item"]) == [0, 2] and valid["item"].tolist() == [2]
    assert sorted(train["ts"]) == [1, 1, 2]
