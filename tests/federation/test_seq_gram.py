"""click_mix's windowed Gram (click_mix.seq_weight, itemitem.py) federated: the server's is the
sum of the clients' parts in the clear, a SecAgg+ sum equals it exactly, a DP Gram stays one
release, and a malformed window part is refused."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.common import MessageType

from fedmtl import itemitem, sequence
from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.federation.screening import validate_gram_part
from fedmtl.federation import secure_gram, server_app
from fedmtl.simulate import run

SEQ = ["dataset.n_users=60", "dataset.n_items=40", "device=cpu", "click_mix.weight=0.5", "click_mix.lam=5",
       "click_mix.seq_weight=1.0", "click_mix.seq_window=2", "click_mix.seq_last=3"]


def pooled_window(cfg) -> np.ndarray:
    data = federation_for(cfg).all_data()
    items, _ = itemitem.gram_part(data.train_mask())
    w = np.zeros((cfg["dataset"]["n_items"],) * 2)
    itemitem.add_part(w, items, sequence.window_part(data.train_u, data.train_i, data.train_age, items,
                                                     int(cfg["click_mix"]["seq_window"])))
    return w


def test_the_servers_window_gram_is_the_sum_of_the_clients_parts():
    from fedmtl.engine.inprocess import InProcessGrid
    from fedmtl.federation.client_app import make_client_app
    from fedmtl.federation.server_app import item_item_round
    from fedmtl.federation.strategies import build_strategy

    cfg = compose(["num_clients=6", *SEQ])
    grid = InProcessGrid(make_client_app(cfg), 6)
    ii, _ = item_item_round(grid, cfg, build_strategy(cfg))
    pooled = pooled_window(cfg)
    assert pooled.max() > 1  # several users of a client, and of several clients, share a pair
    g = itemitem.gram(federation_for(cfg).all_data().train_mask())
    np.testing.assert_allclose(ii.seq, sequence.seq_matrix(pooled, g), rtol=1e-6)
    msgs = [Message(RecordDict({}), dst_node_id=n, message_type=MessageType.EVALUATE) for n in ii.node_items]
    ii.attach(msgs, final=False)
    for m in msgs:
        rec = m.content["item_item"]
        np.testing.assert_array_equal(rec["seq"].numpy(), ii.seq[ii.node_items[m.metadata.dst_node_id]])


@pytest.fixture
def windows(monkeypatch):
    seen = []
    real = server_app.ItemItem.__init__

    def spy(self, cfg, gram, node_items, whole_once=False, dp_release=None, window=None):
        seen.append(None if window is None else window.copy())
        real(self, cfg, gram, node_items, whole_once, dp_release, window)

    monkeypatch.setattr(server_app.ItemItem, "__init__", spy)
    monkeypatch.setattr(secure_gram, "chunk_size", lambda cfg: 205)  # 820 values of a 40 x 40 triangle: 4 rounds a Gram
    return seen


def test_the_secure_window_gram_is_the_clear_one(tmp_path, windows):
    """The summed W is compared, not the runs' metrics: SecAgg+ quantises the model updates, and
    one run of this test saw the two runs' click figures differ by more than 1e-4."""
    cfg = compose(["num_clients=10", "num_rounds=1", *SEQ])
    secure = run(compose(["num_clients=10", "num_rounds=1", *SEQ, "privacy=secagg"]), tmp_path / "secagg")
    run(cfg, tmp_path / "clear")
    assert len(windows) == 2 and windows[0] is not None
    np.testing.assert_array_equal(windows[0], windows[1])
    np.testing.assert_array_equal(windows[0], pooled_window(cfg))
    assert secure["item_gram_bytes_up"] > 0 and "click.hr@10" in secure["metrics"]


@pytest.mark.parametrize("mode", ["client_clip_dp", "secagg_dp"])
def test_a_dp_window_gram_is_noised_and_the_ledger_counts_one_gram_release(tmp_path, windows, mode):
    base = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=8", "num_rounds=2", "device=cpu",
            "aggregate=all", "click_mix.weight=0.3", "click_mix.lam=50", "click_mix.dp_clip=6.0",
            "click_mix.dp_noise_multiplier=2.0", "strategy=fedavg", "privacy.noise_multiplier=0.8", f"privacy={mode}"]
    plain = run(compose(base), tmp_path / "gram")
    seq = run(compose([*base, "click_mix.seq_weight=1.0", "click_mix.seq_window=2"]), tmp_path / "seq")
    assert windows[-1] is not None and not np.array_equal(windows[-1], np.rint(windows[-1]))  # noised
    assert seq["privacy"]["releases"] == plain["privacy"]["releases"]
    assert seq["privacy"]["epsilon"] == pytest.approx(plain["privacy"]["epsilon"], rel=1e-9)


def window_content(items, block, window):
    return RecordDict({"gram": ArrayRecord({"items": Array(np.asarray(items, np.int64)),
                                            "block": Array(np.asarray(block, np.float32)),
                                            **({} if window is None else
                                               {"window": Array(np.asarray(window, np.float32))})})})


@pytest.mark.parametrize("window, said", [
    ([[0, 1], [1, 0]], None),
    (None, "array window is missing"),
    ([[0, 2], [2, 0]], "more often than block does"),
    ([[1, 0], [0, 0]], "counts an item with itself"),
    ([[0, 1], [0, 0]], "window is not symmetric"),
    ([[0, 1, 0], [1, 0, 0]], "window has shape [2, 3]"),
])
def test_a_window_part_must_be_what_window_part_makes(window, said):
    problem = validate_gram_part(window_content([0, 1], [[2, 1], [1, 2]], window), 30, window=True)
    assert problem is None if said is None else said in problem


def test_clipped_parts_pass_the_servers_joint_bound():
    parts = itemitem.clip_parts({"block": np.full((2, 2), 3.0, np.float32),
                                 "window": np.array([[0, 3], [3, 0]], np.float32)}, 5.0)
    assert validate_gram_part(window_content([0, 1], parts["block"], parts["window"]), 30, clip=5.0,
                                 window=True) is None
    assert "joint norm" in validate_gram_part(window_content([0, 1], [[3, 3], [3, 3]], [[0, 3], [3, 0]]), 30,
                                                 clip=5.0, window=True)
