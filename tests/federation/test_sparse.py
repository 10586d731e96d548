"""exchange=sparse: touched rows only, averaged per row over the clients that sent them."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmtl.config import compose, validate
from fedmtl.errors import ConfigError
from fedmtl.federation.sparse import ROW_TABLES, SparseFedAvg, sparse_payload


def test_payload_keeps_touched_and_pad_rows_only():
    arrays = {"encoder.item_emb.weight": np.arange(20, dtype=np.float32).reshape(10, 2),
              "encoder.item_bias.weight": np.zeros((10, 3), np.float32),
              "encoder.user_tower.w": np.ones(4, np.float32)}
    out = sparse_payload(arrays, np.array([3, 1, 3]), 10, pad_rows=2, rng=np.random.default_rng(0))
    rows = out["encoder.item_emb.weight::rows"]
    assert {1, 3} <= set(rows) and len(rows) == 4
    np.testing.assert_array_equal(out["encoder.item_emb.weight::values"], arrays["encoder.item_emb.weight"][rows])
    np.testing.assert_array_equal(out["encoder.user_tower.w"], arrays["encoder.user_tower.w"])
    assert "encoder.item_emb.weight" not in out


def test_sparse_aggregate_equals_rowwise_fedavg_by_hand():
    rng = np.random.default_rng(1)
    current = {"encoder.item_emb.weight": rng.normal(size=(6, 2)).astype(np.float32),
               "encoder.item_bias.weight": rng.normal(size=(6, 1)).astype(np.float32),
               "dense": rng.normal(size=3).astype(np.float32)}
    clients = [(np.array([0, 2]), 10), (np.array([2, 3]), 30)]
    updates = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in current.items()} for _ in clients]
    strat = SparseFedAvg(min_train_nodes=1, min_available_nodes=1)
    strat._current = ArrayRecord({k: Array(v) for k, v in current.items()})
    replies = []
    for (rows, n), upd in zip(clients, updates):
        payload = sparse_payload(upd, rows, 6, 0, np.random.default_rng(0))
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in payload.items()}),
                              "metrics": MetricRecord({"num-examples": n})})
        instr = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type="train")
        replies.append(Message(content, reply_to=instr))
    out, _ = strat.aggregate_train(1, replies)
    got = {k: v.numpy() for k, v in out.items()}
    # by hand
    np.testing.assert_allclose(got["dense"], (10 * updates[0]["dense"] + 30 * updates[1]["dense"]) / 40, rtol=1e-6)
    for name in [n for n in ROW_TABLES if n in current]:
        exp = current[name].copy()
        exp[0] = updates[0][name][0]
        exp[2] = (10 * updates[0][name][2] + 30 * updates[1][name][2]) / 40
        exp[3] = updates[1][name][3]
        np.testing.assert_allclose(got[name], exp, rtol=1e-6)  # rows 1, 4, 5: nobody sent them, kept


def test_sparse_with_secagg_is_refused_in_one_line():
    cfg = compose(["exchange=sparse"])
    cfg["privacy"] = {"name": "secagg"}
    with pytest.raises(ConfigError) as e:
        validate(cfg)
    assert "exchange=sparse" in str(e.value) and "\n" not in str(e.value)


def test_sparse_run_uploads_fewer_bytes(tmp_path):
    from fedmtl.simulate import run
    import json

    base = ["dataset.n_users=30", "dataset.n_items=200", "dataset.mean_interactions=10", "num_clients=5",
            "num_rounds=1", "save_model=false"]
    run(compose(base), tmp_path / "d")
    run(compose(base + ["exchange=sparse"]), tmp_path / "s")
    dense = json.loads((tmp_path / "d" / "metrics.jsonl").read_text().splitlines()[0])["bytes_up"]
    sparse = json.loads((tmp_path / "s" / "metrics.jsonl").read_text().splitlines()[0])["bytes_up"]
    assert sparse < dense
