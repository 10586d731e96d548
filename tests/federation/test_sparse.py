"""exchange=sparse: touched rows only, averaged per row over the clients that sent them."""

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from fedmtl.config import compose, validate
from fedmtl.errors import ConfigError
from fedmtl.federation.sparse import ROW_TABLES, SparseFedAvg, sparse_payload, unpack
from fedmtl.tasks import choose_rows


def _payload(values, received, touched, n_items, pad_rows=0, dtype="float32", seed=0):
    rows = choose_rows(touched, n_items, pad_rows, np.random.default_rng(seed))
    return rows, sparse_payload(values, received, rows, n_items, dtype, np.random.default_rng(seed + 1))


def test_payload_keeps_touched_and_pad_rows_only():
    received = {"encoder.item_emb.weight": np.zeros((10, 2), np.float32),
                "encoder.item_bias.weight": np.zeros((10, 3), np.float32),
                "encoder.user_tower.w": np.zeros(4, np.float32)}
    arrays = {"encoder.item_emb.weight": np.arange(20, dtype=np.float32).reshape(10, 2),
              "encoder.item_bias.weight": np.ones((10, 3), np.float32),
              "encoder.user_tower.w": np.ones(4, np.float32)}
    rows, out = _payload(arrays, received, np.array([3, 1, 3]), 10, pad_rows=2)
    assert {1, 3} <= set(rows) and len(rows) == 4
    np.testing.assert_array_equal(out["::rows"], rows)
    assert set(out) == {"::rows", "::rows_delta", "::dense_delta"}  # packed: no per-parameter arrays
    got_rows, upd = unpack(out, {k: v.shape for k, v in received.items()})
    np.testing.assert_array_equal(got_rows, rows)
    np.testing.assert_array_equal(upd["encoder.item_emb.weight"], arrays["encoder.item_emb.weight"][rows])
    np.testing.assert_array_equal(upd["encoder.item_bias.weight"], arrays["encoder.item_bias.weight"][rows])
    np.testing.assert_array_equal(upd["encoder.user_tower.w"], arrays["encoder.user_tower.w"])
    with pytest.raises(ValueError, match="does not fit"):
        unpack(out, {**{k: v.shape for k, v in received.items()}, "encoder.user_tower.w": (3,)})


def _replies(payloads_and_counts):
    replies = []
    for payload, n in payloads_and_counts:
        content = RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in payload.items()}),
                              "metrics": MetricRecord({"num-examples": n})})
        instr = Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=1, message_type="train")
        replies.append(Message(content, reply_to=instr))
    return replies


def _problem(seed=1):
    rng = np.random.default_rng(seed)
    current = {"encoder.item_emb.weight": rng.normal(size=(6, 2)).astype(np.float32),
               "encoder.item_bias.weight": rng.normal(size=(6, 1)).astype(np.float32),
               "dense": rng.normal(size=3).astype(np.float32)}
    clients = [(np.array([0, 2]), 10), (np.array([2, 3]), 30)]
    trained = [{k: rng.normal(size=v.shape).astype(np.float32) for k, v in current.items()} for _ in clients]
    return current, clients, trained


def _aggregate(current, clients, trained, dtype="float32", seed=0):
    strat = SparseFedAvg(min_train_nodes=1, min_available_nodes=1)
    strat._current = ArrayRecord({k: Array(v) for k, v in current.items()})
    payloads = [(_payload(t, current, rows, 6, 0, dtype, seed + j)[1], n) for j, ((rows, n), t) in
                enumerate(zip(clients, trained))]
    out, _ = strat.aggregate_train(1, _replies(payloads))
    return {k: v.numpy() for k, v in out.items()}


def test_sparse_aggregate_equals_rowwise_fedavg_by_hand():
    current, clients, trained = _problem()
    got = _aggregate(current, clients, trained)
    # by hand: FedAvg of the dense array, row means over the senders, the rest kept
    np.testing.assert_allclose(got["dense"], (10 * trained[0]["dense"] + 30 * trained[1]["dense"]) / 40, rtol=1e-5)
    for name in [n for n in ROW_TABLES if n in current]:
        exp = current[name].copy()
        exp[0] = trained[0][name][0]
        exp[2] = (10 * trained[0][name][2] + 30 * trained[1][name][2]) / 40
        exp[3] = trained[1][name][3]
        np.testing.assert_allclose(got[name], exp, rtol=1e-5, atol=1e-6)  # rows 1, 4, 5: nobody sent them, kept


def test_float16_and_int8_updates_decode_close_and_int8_is_unbiased():
    current, clients, trained = _problem()
    exact = _aggregate(current, clients, trained)
    half = _aggregate(current, clients, trained, "float16")
    for k in exact:
        np.testing.assert_allclose(half[k], exact[k], rtol=2e-3, atol=2e-3)
    # int8: one update's error is within its row's step (max |delta| / 127) ...
    one = _aggregate(current, clients, trained, "int8")
    delta = {k: np.abs(t - current[k]).max() for t in trained for k, t in t.items()}
    for k in exact:
        assert np.abs(one[k] - exact[k]).max() <= max(delta.values()) / 127 + 1e-6
    # ... and its rounding is unbiased: the mean over many seeds approaches the exact aggregate
    mean = {k: np.mean([_aggregate(current, clients, trained, "int8", s)[k] for s in range(0, 400, 2)], axis=0)
            for k in exact}
    for k in exact:
        np.testing.assert_allclose(mean[k], exact[k], atol=max(delta.values()) / 127 / 5)


def test_int8_payload_is_several_times_smaller_than_float32():
    rng = np.random.default_rng(0)
    received = {"encoder.item_emb.weight": np.zeros((1000, 32), np.float32), "tower": np.zeros((64, 32), np.float32),
                "bias": np.zeros(64, np.float32), "offset": np.zeros((), np.float32)}
    trained = {k: rng.normal(size=v.shape).astype(np.float32) for k, v in received.items()}
    touched = rng.choice(1000, 80, replace=False)
    size = {d: ArrayRecord({k: Array(v) for k, v in _payload(trained, received, touched, 1000, 50, d)[1].items()}
                           ).count_bytes() for d in ("float32", "float16", "int8")}
    assert size["int8"] * 3 < size["float32"] and size["float16"] * 1.8 < size["float32"]


@pytest.mark.parametrize("aggregate", ["all", "encoder"])
def test_sparse_client_changes_only_the_rows_it_sends(aggregate):
    """The click loss runs over the row set, so the decoded upload is the whole local update;
    it holds the shared arrays only (aggregate=encoder: no personal parameter at all)."""
    from fedmtl.data import federation_for
    from fedmtl.federation.client_state import sparse_rows
    from fedmtl.tasks import click_candidates
    from fedmtl.model import build_model, get_arrays, shared_names
    from fedmtl.train import train_config, local_train
    from fedmtl.weighting import build_weighting
    from dataclasses import replace

    for click_loss in ("softmax", "sampled"):
        cfg = validate(compose(["dataset.n_users=20", "dataset.n_items=300", "dataset.mean_interactions=15",
                                "num_clients=4", "exchange=sparse", "exchange.pad_rows=20", f"aggregate={aggregate}",
                                f"train.click_loss={click_loss}"]))
        fed = federation_for(cfg)
        data = fed.partition_data(0)
        model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, seed=0)
        names = shared_names(model, aggregate)
        before = get_arrays(model, names)
        rows = sparse_rows(cfg, data, model.n_items, seed=3)
        own = np.unique(data.train_i.numpy())
        assert set(own) <= set(rows) and len(rows) == len(own) + 20
        tcfg = replace(train_config(cfg, 2), candidates=click_candidates(rows, data.train_i.numpy(), model.n_items,
                                                                          "cpu"))
        local_train(model, data, cfg["tasks"], build_weighting(cfg["weighting"], cfg["tasks"]), tcfg, seed=0,
                    shared=names)
        after = get_arrays(model, names)
        # the packed upload unpacks to exactly the shared arrays: heads yes, user embeddings never
        payload = sparse_payload(after, before, rows, model.n_items, "float32")
        got_rows, upd = unpack(payload, {k: v.shape for k, v in before.items()})
        assert set(upd) == set(names) and not [n for n in upd if n.startswith("personal.user_")]
        if aggregate == "all":
            assert {f"personal.heads.{t}.proj" for t in cfg["tasks"]} <= set(upd)
        else:
            assert all(n.startswith("encoder.") for n in upd)
        for name, u in upd.items():
            exp = after[name] - before[name]
            np.testing.assert_allclose(u, exp[got_rows] if name in ROW_TABLES else exp, atol=1e-6)
        for name in ROW_TABLES:
            if name in after:
                changed = np.flatnonzero(np.abs(after[name] - before[name]).sum(axis=1) > 0)
                assert len(changed) > 0 and set(changed) <= set(rows), (click_loss, name)


def test_sparse_with_local_dp_is_refused_in_one_line():
    cfg = compose(["exchange=sparse"])
    cfg["privacy"] = compose(["privacy=local_dp"])["privacy"]
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


def test_sparse_sampled_without_pads_is_refused_in_one_line():
    with pytest.raises(ConfigError) as e:
        validate(compose(["exchange=sparse", "exchange.pad_rows=0", "train.click_loss=sampled"]))
    assert "pad_rows" in str(e.value) and "\n" not in str(e.value)


def _loop_aggregate(current, payloads, weights, factors):
    """The per-client loop rowwise_fedavg replaces (decode each upload, add it in): the reference."""
    from fedmtl.sparse_codec import layout
    shapes = {k: v.shape for k, v in current.items()}
    dense_names, row_names = layout(current)
    acc = {n: np.zeros(shapes[n], np.float64) for n in row_names}
    wsum = np.zeros(shapes[row_names[0]][0])
    dense = {}
    for p, w, f in zip(payloads, weights, factors):
        rows, upd = unpack(p, shapes)
        for k in dense_names:
            x = np.asarray(current[k] + upd[k], dtype=current[k].dtype)
            dense[k] = x * f if k not in dense else dense[k] + x * f
        for n in row_names:
            acc[n][rows] += w * upd[n]
        wsum[rows] += w
    sent = wsum > 0
    for n in row_names:
        new = current[n].copy()
        new[sent] = (current[n][sent] + acc[n][sent] / wsum[sent].reshape(-1, 1)).astype(new.dtype)
        dense[n] = new
    return dense


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_rowwise_fedavg_equals_the_per_client_loop_bit_for_bit(dtype, threads, monkeypatch):
    """The server's vectorised aggregation (every client's codes decoded and scatter-added at once;
    with threads=2 the columns of the row tables split over two threads, as for a large round)
    gives the same floats as decoding and adding one client after another, and a second call,
    which reuses the first's buffers, the same again."""
    import fedmtl.jobs as jobs
    import fedmtl.sparse_codec as codec
    from fedmtl.sparse_codec import rowwise_fedavg
    if threads == 2:
        monkeypatch.setattr(codec, "PARALLEL_VALUES", 0)
        monkeypatch.setattr(jobs, "usable_cores", lambda: 2)
    rng = np.random.default_rng(3)
    n_items = 40
    current = {"encoder.item_emb.weight": rng.normal(size=(n_items, 4)).astype(np.float32),
               "encoder.item_bias.weight": rng.normal(size=(n_items, 3)).astype(np.float32),
               "heads.proj": rng.normal(size=(4, 4)).astype(np.float32),
               "heads.offset": np.asarray(rng.normal(), dtype=np.float32),
               "tower.bias": rng.normal(size=5).astype(np.float32)}
    payloads, weights = [], []
    for c in range(7):
        trained = {k: (v + rng.normal(size=v.shape)).astype(np.float32) for k, v in current.items()}
        touched = rng.choice(n_items, int(rng.integers(1, 12)), replace=False)
        payloads.append(_payload(trained, current, touched, n_items, 5, dtype, seed=10 * c)[1])
        weights.append(float(rng.integers(1, 50)))
    factors = [w / sum(weights) for w in weights]
    got = rowwise_fedavg(current, payloads, np.array(weights), factors)
    want = _loop_aggregate(current, payloads, np.array(weights), factors)
    assert set(got) == set(want)
    again = rowwise_fedavg(current, payloads[::-1], np.array(weights[::-1]), factors[::-1])
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
        np.testing.assert_array_equal(got[k], want[k])
    want_again = _loop_aggregate(current, payloads[::-1], np.array(weights[::-1]), factors[::-1])
    for k in want_again:
        np.testing.assert_array_equal(again[k], want_again[k])
