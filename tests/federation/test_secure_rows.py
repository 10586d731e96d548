"""exchange=sparse under SecAgg+: row-wise averaging from two secure sums. Each client sends
its row update at full size (zero off its rows) and a 0/1 indicator of its rows; SecAgg+
releases only the two sums, and the server's row-wise mean equals SparseFedAvg's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmtl.config import compose
from fedmtl.federation import secagg_round
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run
from fedmtl.sparse_codec import dense_rows, rowwise_mean, sparse_payload

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=8", "num_rounds=2", "device=cpu",
        "exchange=sparse", "exchange.dtype=float32", "exchange.pad_rows=4", "aggregate=all"]


def _model(out) -> dict:
    return {k: v.numpy() for k, v in torch.load(out / "model_shared.pt").items()}


def test_rowwise_mean_of_two_sums_is_the_mean_over_each_rows_senders():
    rng = np.random.default_rng(0)
    current = {"encoder.item_emb.weight": rng.normal(size=(6, 3)).astype(np.float32),
               "tower.w": rng.normal(size=(2, 2)).astype(np.float32)}
    shapes = {k: v.shape for k, v in current.items()}
    clients = [(np.array([0, 2]), 3.0), (np.array([2, 5]), 1.0)]
    trained = []
    for rows, _ in clients:
        t = {k: v + rng.normal(size=v.shape).astype(np.float32) for k, v in current.items()}
        trained.append((sparse_payload(t, current, rows, 6), t))
    weights = np.array([w for _, w in clients])
    sums = [dense_rows(p, shapes) for p, _ in trained]
    mean_upd = {k: sum(w * s[0][k] for w, s in zip(weights, sums)) / weights.sum() for k in shapes}
    mean_ind = sum(w * s[1] for w, s in zip(weights, sums)) / weights.sum()
    new = rowwise_mean(current, mean_upd, mean_ind, smallest=1.0 / weights.sum())
    emb = "encoder.item_emb.weight"
    t0, t1 = trained[0][1][emb], trained[1][1][emb]
    np.testing.assert_allclose(new[emb][0], t0[0], rtol=1e-6)  # one sender: its own row
    np.testing.assert_allclose(new[emb][2], (3 * t0[2] + t1[2]) / 4, rtol=1e-6)  # two: their weighted mean
    np.testing.assert_array_equal(new[emb][[1, 3, 4]], current[emb][[1, 3, 4]])  # nobody: kept
    np.testing.assert_allclose(new["tower.w"], (3 * trained[0][1]["tower.w"] + trained[1][1]["tower.w"]) / 4,
                               rtol=1e-5)


def test_sparse_under_secagg_trains_the_model_plain_sparse_does(tmp_path, monkeypatch):
    collected = []
    real = secagg_round._CountingGrid.send_and_receive

    def spy(self, messages, *, timeout=None):
        replies = real(self, messages, timeout=timeout)
        collected.append(replies)
        return replies

    monkeypatch.setattr(secagg_round._CountingGrid, "send_and_receive", spy)
    secure = run(compose(TINY + ["privacy=secagg"]), tmp_path / "secagg")
    monkeypatch.undo()
    plain = run(compose(TINY), tmp_path / "plain")
    one_secure = run(compose(TINY + ["privacy=secagg", "num_rounds=1"]), tmp_path / "secagg1")
    one_plain = run(compose(TINY + ["num_rounds=1"]), tmp_path / "plain1")
    a, b = _model(tmp_path / "secagg1"), _model(tmp_path / "plain1")
    assert a.keys() == b.keys()
    for k in a:  # one aggregate: quantisation error only (clipping_range 8 over 2**22 levels)
        np.testing.assert_allclose(a[k], b[k], atol=2e-5, err_msg=k)
    assert one_secure["metrics"]["rating.rmse"] == pytest.approx(one_plain["metrics"]["rating.rmse"], abs=1e-5)
    for metric in ("rating.rmse", "like.auc", "click.ndcg@10"):  # two rounds: the clients' Adam carries it on
        assert secure["metrics"][metric] == pytest.approx(plain["metrics"][metric], abs=2e-3)
    rows = read_jsonl(tmp_path / "secagg" / "metrics.jsonl")
    assert all(r["secagg"]["aggregated"] and r["secagg"]["rows_sent"] > 0 for r in rows)
    # every client's masked vector has the same shapes, whatever rows it touched: the server
    # sees no row set, only the round's per-row sums
    from flwr.common import bytes_to_ndarray
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
    shapes = []
    for replies in collected:
        for r in replies:
            cfg = r.content.config_records.get(RECORD_KEY_CONFIGS) if not r.has_error() else None
            if cfg is not None and Key.MASKED_PARAMETERS in cfg:
                shapes.append(tuple(bytes_to_ndarray(b).shape for b in cfg[Key.MASKED_PARAMETERS]))
    assert len(shapes) == 2 * 8 and len(set(shapes)) == 1
    assert (40,) in shapes[0]  # the row indicator: one masked count per item


def test_fedadam_steps_from_the_secure_row_wise_mean(tmp_path):
    """The recipe's server step over secure rows: every round aggregates, and the first
    round's model equals plain sparse FedAdam's to quantisation error."""
    adam = ["strategy=fedadam", "strategy.eta=0.05", "strategy.tau=0.001", "num_rounds=1"]
    secure = run(compose(TINY + adam + ["privacy=secagg"]), tmp_path / "secagg")
    plain = run(compose(TINY + adam), tmp_path / "plain")
    rows = read_jsonl(tmp_path / "secagg" / "metrics.jsonl")
    assert all("skipped" not in r and r["secagg"]["aggregated"] for r in rows)
    a, b = _model(tmp_path / "secagg"), _model(tmp_path / "plain")
    for k in a:
        np.testing.assert_allclose(a[k], b[k], atol=2e-3, err_msg=k)  # Adam: at most eta * quantisation / tau
    assert secure["metrics"]["rating.rmse"] == pytest.approx(plain["metrics"]["rating.rmse"], abs=1e-3)
