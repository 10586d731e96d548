"""privacy=secagg: SecAgg+ on Flower's legacy workflow gives the FedAvg aggregate (up to
quantisation) without any client's update reaching the server, survives a client that
drops out mid-round, and no mode ever sends personal parameters.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from flwr.common import bytes_to_ndarray
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage

from fedmtl.config import compose
from fedmtl.engine.inprocess import InProcessGrid
from fedmtl import client_step
from fedmtl.federation.server_app import initial_arrays
from fedmtl.knob_names import PRIVACY
from fedmtl.simulate import run

TINY = ["backend=inprocess", "dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "device=cpu"]
PLAIN, SECURE = TINY + ["num_rounds=1"], TINY + ["num_rounds=1", "privacy=secagg"]


@pytest.fixture
def traffic(monkeypatch):
    """Every (message, reply) pair that passes through the in-process grid."""
    seen = []
    original = InProcessGrid.send_and_receive

    def recording(self, messages, *, timeout=None):
        messages = list(messages)
        replies = list(original(self, messages, timeout=timeout))
        by_id = {m.metadata.message_id: m for m in messages}
        seen.extend((by_id.get(r.metadata.reply_to_message_id), r) for r in replies)
        return replies

    monkeypatch.setattr(InProcessGrid, "send_and_receive", recording)
    return seen


def shared(out) -> dict:
    return torch.load(out / "model_shared.pt")


def test_the_secure_aggregate_is_the_fedavg_aggregate_within_quantisation_error(tmp_path, quantisation_bound):
    plain = run(compose(PLAIN), tmp_path / "plain")
    secure = run(compose(SECURE), tmp_path / "secure")
    a, b = shared(tmp_path / "plain"), shared(tmp_path / "secure")
    bound = quantisation_bound(compose(SECURE), list(range(6)))
    diffs = [float((a[k].double() - b[k].double()).abs().max()) for k in a]
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype for k in a)
    assert max(diffs) <= bound
    assert max(diffs) > 0  # it really went through SecAgg+'s quantisation
    moved = max(float((a[k] - torch.as_tensor(initial_arrays(compose(PLAIN))[k].numpy())).abs().max()) for k in a)
    assert moved > 100 * bound  # and the round moved the model far more than that
    assert secure["metrics"]["rating.rmse"] == pytest.approx(plain["metrics"]["rating.rmse"], abs=1e-3)
    row = json.loads((tmp_path / "secure" / "metrics.jsonl").read_text())
    assert row["answered"] == row["sampled"] == 6 and row["secagg"]["aggregated"]
    assert set(row["train"]) == {"loss.rating", "loss.click", "loss.like"}  # the masked mean losses


def test_no_single_client_update_reaches_the_server(tmp_path, traffic):
    run(compose(SECURE), tmp_path)
    stage2 = [r for _, r in traffic if RECORD_KEY_CONFIGS in r.content
              and Key.MASKED_PARAMETERS in r.content[RECORD_KEY_CONFIGS]]  # the replies with the vectors
    assert len(stage2) == 6
    q = compose(SECURE)["privacy"]["quantization_range"]
    for _, reply in traffic:
        for record in reply.content.array_records.values():
            assert len(record) == 0  # no plaintext arrays in any reply
    for reply in stage2:
        content = reply.content
        assert content["fitres.num_examples"]["num_examples"] == 1 and len(content["fitres.metrics"]) == 0
        masked = np.concatenate([bytes_to_ndarray(b).ravel() for b in content[RECORD_KEY_CONFIGS][Key.MASKED_PARAMETERS]])
        # An unmasked quantised vector lies in [0, Q); masked, it is spread over [0, 2**32).
        assert np.mean(masked >= q) > 0.98
        assert 0.45 < masked.mean() / 2**32 < 0.55


def test_a_client_dropping_out_mid_round_still_gives_the_survivors_fedavg(tmp_path, monkeypatch,
                                                                          quantisation_bound):
    original = client_step.client_round

    def crashing(model, data, tasks, weighting, tcfg, cfg, seed):
        if seed == 1 * 100_003 + 2:  # client 2 in round 1 (seed 0): dies after SecAgg+ key sharing
            raise RuntimeError("client 2 lost its connection")
        return original(model, data, tasks, weighting, tcfg, cfg, seed)

    monkeypatch.setattr(client_step, "client_round", crashing)
    secure = run(compose(TINY + ["num_rounds=2", "privacy=secagg"]), tmp_path / "secure")
    lines = [json.loads(x) for x in (tmp_path / "secure" / "metrics.jsonl").read_text().splitlines()]
    first = lines[0]
    assert (first["sampled"], first["answered"], first["failed"]) == (6, 5, 1)
    assert first["secagg"]["aggregated"]
    assert first["secagg"]["stages"][Stage.SHARE_KEYS] == [6, 6]  # it dropped after sharing its keys
    assert lines[1]["answered"] == 6 and secure["rounds"] == 2  # and rejoined the next round
    # Round 1 alone against plain FedAvg over the same five survivors:
    run(compose(PLAIN), tmp_path / "plain")
    run(compose(SECURE), tmp_path / "secure1")
    a, b = shared(tmp_path / "plain"), shared(tmp_path / "secure1")
    assert max(float((a[k].double() - b[k].double()).abs().max()) for k in a) <= quantisation_bound(
        compose(SECURE), [0, 1, 3, 4, 5])


def test_too_many_dropouts_skip_the_round_and_say_so(tmp_path, monkeypatch):
    original = client_step.client_round

    def crashing(model, data, tasks, weighting, tcfg, cfg, seed):
        if seed % 100_003 in (1, 2, 3, 4):  # four of six: fewer than the 3 shares a survivor needs
            raise RuntimeError("lost")
        return original(model, data, tasks, weighting, tcfg, cfg, seed)

    monkeypatch.setattr(client_step, "client_round", crashing)
    summary = run(compose(SECURE), tmp_path)
    row = json.loads((tmp_path / "metrics.jsonl").read_text())
    assert row["answered"] == 2 and row["secagg"]["aggregated"] is False
    initial = initial_arrays(compose(SECURE))
    saved = shared(tmp_path)
    assert all(torch.equal(saved[k], torch.as_tensor(initial[k].numpy())) for k in saved)  # model unchanged
    assert summary["rounds"] == 1


@pytest.mark.parametrize("mode", PRIVACY)
def test_personal_parameters_never_leave_a_client_in_any_mode(tmp_path, traffic, mode):
    cfg = compose(TINY + ["num_rounds=1", f"privacy={mode}", "aggregate=encoder"])
    run(cfg, tmp_path)
    shapes = {k: tuple(v.numpy().shape) for k, v in initial_arrays(cfg).items()}
    replies = [r for _, r in traffic]
    assert replies and not [r for r in replies if r.has_error()]
    uploads = 0
    for reply in replies:
        for record in reply.content.array_records.values():
            assert not [n for n in record if "personal" in n]
            if len(record):
                assert set(record.keys()) == set(shapes)  # exactly the shared encoder
                uploads += 1
        configs = reply.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is not None and Key.MASKED_PARAMETERS in configs:
            got = [bytes_to_ndarray(b).shape for b in configs[Key.MASKED_PARAMETERS]]
            extra = 2 if mode == "secagg" else 0  # the masked mean losses and saturation figure
            assert got[1:1 + len(shapes)] == list(shapes.values())  # after SecAgg+'s weight factor
            assert len(got) == 1 + len(shapes) + extra
            uploads += 1
    assert uploads == 6


def test_server_decay_scales_the_secure_aggregate_too(tmp_path, quantisation_bound):
    """SecAgg+ aggregates outside the strategy classes; server_decay must still apply."""
    run(compose(SECURE), tmp_path / "secure")
    run(compose(SECURE + ["server_decay=0.3"]), tmp_path / "decayed")
    a, b = shared(tmp_path / "secure"), shared(tmp_path / "decayed")
    bound = quantisation_bound(compose(SECURE), list(range(6)))
    assert max(float((0.7 * a[k].double() - b[k].double()).abs().max()) for k in a) <= bound
    assert max(float(a[k].abs().max()) for k in a) > 100 * bound
