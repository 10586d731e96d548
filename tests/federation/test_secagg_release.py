"""What a SecAgg+ round releases is checked before it is used (secagg_workflow.py): a tampered masked
vector refuses the round and leaves the model as it was; values saturated at the clipping
range stop the run with one line; 0-d arrays (aggregate=all's head offsets) come back as the
FedAvg mean, which Flower's own unmask stage got wrong (issue 24 item 8)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray, ndarray_to_bytes
from flwr.common.secure_aggregation.quantization import dequantize
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedmtl.config import compose
from fedmtl.engine.inprocess import InProcessGrid
from fedmtl.errors import ConfigError
from fedmtl.federation.secagg_workflow import check_release, dequantise
from fedmtl.federation.server_app import initial_arrays
from fedmtl.simulate import run

TINY = ["backend=inprocess", "dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "device=cpu", "num_rounds=1"]
SECURE = TINY + ["privacy=secagg"]


def tamper(monkeypatch, offset_of, rounds=(1,)):
    """One client (the first to answer) adds offset_of(shape) to its masked integers at the
    collect-masked-vectors stage, as a hostile client would: the masks hide nothing from it."""
    original = InProcessGrid.send_and_receive
    seen = {"round": 0}

    def hostile(self, messages, *, timeout=None):
        messages = list(messages)
        configs = messages[0].content.config_records.get(RECORD_KEY_CONFIGS) if messages else None
        stage = configs.get(Key.STAGE) if configs is not None else None  # read before a client pops it
        replies = list(original(self, messages, timeout=timeout))
        if stage == Stage.COLLECT_MASKED_VECTORS:
            seen["round"] += 1
            if seen["round"] in rounds:
                record = replies[0].content[RECORD_KEY_CONFIGS]
                vectors = [bytes_to_ndarray(b) for b in record[Key.MASKED_PARAMETERS]]
                record[Key.MASKED_PARAMETERS] = [ndarray_to_bytes((v + offset_of(v.shape)) % 2**32) for v in vectors]
        return replies

    monkeypatch.setattr(InProcessGrid, "send_and_receive", hostile)


@pytest.mark.parametrize("offset", ["constant", "random"])
def test_a_tampered_masked_vector_refuses_the_round_and_the_model_stays(tmp_path, monkeypatch, caplog, offset):
    rng = np.random.default_rng(5)
    offsets = {"constant": lambda shape: np.full(shape, 2**31, np.int64),
               "random": lambda shape: rng.integers(0, 2**32, shape, dtype=np.int64)}
    tamper(monkeypatch, offsets[offset])
    run(compose(SECURE), tmp_path)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["secagg"]["aggregated"] is False
    assert "tampered" in row["secagg"]["refused"] and row["skipped"] == row["secagg"]["refused"]
    assert any("round 1 skipped: SecAgg+ round refused" in r.getMessage() for r in caplog.records)
    initial, saved = initial_arrays(compose(SECURE)), torch.load(tmp_path / "model_shared.pt")
    assert all(torch.equal(saved[k], torch.as_tensor(initial[k].numpy())) for k in saved)  # not corrupted


def test_after_a_refused_round_the_next_honest_round_aggregates(tmp_path, monkeypatch):
    tamper(monkeypatch, lambda shape: np.full(shape, 2**31, np.int64), rounds=(1,))
    run(compose(SECURE + ["num_rounds=2"]), tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["secagg"]["aggregated"] for r in rows] == [False, True]
    assert rows[1]["secagg"]["saturated"] == 0.0


def test_every_round_reports_its_saturation_and_aggregates_the_0d_offsets(tmp_path, quantisation_bound):
    """aggregate=all shares the heads' 0-d offsets: SecAgg+ must give FedAvg's mean for them too."""
    plain = run(compose(TINY + ["aggregate=all"]), tmp_path / "plain")
    secure = run(compose(SECURE + ["aggregate=all"]), tmp_path / "secure")
    a, b = torch.load(tmp_path / "plain" / "model_shared.pt"), torch.load(tmp_path / "secure" / "model_shared.pt")
    scalars = [k for k in a if a[k].dim() == 0]
    assert scalars  # the heads' offsets
    bound = quantisation_bound(compose(SECURE + ["aggregate=all"]), list(range(6)))
    for k in a:
        assert a[k].shape == b[k].shape and float((a[k].double() - b[k].double()).abs().max()) <= bound, k
    row = json.loads((tmp_path / "secure" / "metrics.jsonl").read_text())
    assert row["secagg"]["saturated"] == 0.0 and row["secagg"]["aggregated"]
    assert secure["metrics"]["rating.rmse"] == pytest.approx(plain["metrics"]["rating.rmse"], abs=1e-3)


def test_saturated_values_stop_the_run_with_one_line_naming_the_knob(tmp_path):
    with pytest.raises(ConfigError, match=r"privacy.clipping_range=0.001: in round 1, .*% of the values .* sat at"):
        run(compose(SECURE + ["privacy.clipping_range=0.001"]), tmp_path)


def test_flowers_dequantize_drops_the_offset_of_a_0d_array_and_ours_does_not():
    """The measured cause of item 8: the same unmasked sum, through Flower's arithmetic and ours."""
    m, clip, q = 943, 8.0, 2**22
    values = np.full(m, 0.25)  # every client's weighted value, weight factor 1 (max weight)
    quantised = np.round((values + clip) * q / (2 * clip)).astype(np.int64)
    recon = [np.array([m * q]), np.array(quantised.sum()), np.array([quantised.sum()])]
    flower = dequantize(recon[1:], clip, q)
    for vec in flower:  # SecAggPlusWorkflow.unmask_stage, verbatim
        vec += -(m - 1) * clip
        vec *= q / (m * q)
    assert float(flower[1][0]) == pytest.approx(0.25)  # a 1-d array: right
    assert float(flower[0]) == pytest.approx(0.25 * m + (m - 1) * clip)  # a 0-d array: 7771.75, not 0.25
    ours = dequantise(recon, m, clip, q)
    assert float(ours[0]) == pytest.approx(0.25) and float(ours[1][0]) == pytest.approx(0.25)
    assert check_release(recon, m, q) is None
    assert "outside" in check_release([recon[0], recon[1] + m * q], m, q)


def test_a_client_whose_update_is_not_finite_does_not_send_it_and_the_round_goes_on(tmp_path, monkeypatch):
    from fedmtl import client_step

    original = client_step.client_round

    def diverging(model, data, tasks, weighting, tcfg, cfg, seed):
        result = original(model, data, tasks, weighting, tcfg, cfg, seed)
        if seed % 100_003 == 2:  # client 2 in round 1: a NaN in its shared item table
            model.encoder.item_emb.weight.data[0, 0] = float("nan")
        return result

    monkeypatch.setattr(client_step, "client_round", diverging)
    run(compose(SECURE), tmp_path)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert (row["sampled"], row["answered"]) == (6, 5) and row["failed_by"]["error"] == 1
    assert row["secagg"]["aggregated"] and row["secagg"]["saturated"] == 0.0
    saved = torch.load(tmp_path / "model_shared.pt")
    assert all(torch.isfinite(v).all() for v in saved.values())
