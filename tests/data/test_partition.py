"""fedmtl/data/partition.py: which users each client holds."""

from __future__ import annotations

import numpy as np
import pytest

from fedmtl.data.partition import partition
from fedmtl.errors import ConfigError

USERS = np.array([9, 2, 14, 5, 7, 30, 11, 3, 21, 8, 4])  # 11 users, unsorted on purpose


def test_one_user_per_client_in_id_order_when_clients_equal_users():
    parts = partition(USERS, len(USERS), seed=0)
    assert [p.tolist() for p in parts] == [[u] for u in sorted(USERS)]
    # client k holds the k-th user whatever the seed, so node ids map to users readably
    assert [p.tolist() for p in partition(USERS, len(USERS), seed=99)] == [p.tolist() for p in parts]


@pytest.mark.parametrize("num_clients", [1, 2, 3, 4, 10])
def test_groups_are_a_near_equal_disjoint_cover(num_clients):
    parts = partition(USERS, num_clients, seed=0)
    assert len(parts) == num_clients
    together = np.concatenate(parts)
    assert sorted(together.tolist()) == sorted(USERS.tolist())  # each user exactly once
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    assert all((np.diff(p) > 0).all() for p in parts)  # each client's users in id order


def test_grouping_is_seeded():
    a, b = partition(USERS, 3, seed=7), partition(USERS, 3, seed=7)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]
    others = [[p.tolist() for p in partition(USERS, 3, seed=s)] for s in range(8, 14)]
    assert any(o != [p.tolist() for p in a] for o in others)


def test_grouping_does_not_depend_on_the_input_order():
    a = partition(USERS, 4, seed=1)
    b = partition(USERS[::-1], 4, seed=1)
    assert [p.tolist() for p in a] == [p.tolist() for p in b]


@pytest.mark.parametrize("num_clients", [12, 0, -1])
def test_impossible_client_counts_are_a_config_error_naming_num_clients(num_clients):
    with pytest.raises(ConfigError) as info:
        partition(USERS, num_clients, seed=0)
    msg = str(info.value)
    assert msg.startswith(f"num_clients={num_clients}") and "11 users" in msg and "\n" not in msg
