"""Helpers shared by the federation tests."""

from __future__ import annotations

import pytest

from fedmtl.data import federation_for
from fedmtl.federation.secagg_round import max_weight
from fedmtl.metrics import combine
from fedmtl.model import build_model
from fedmtl.train import evaluate


def _untrained_metrics(cfg: dict) -> dict:
    """What the run's evaluation would report after 0 rounds: every client's fresh model."""
    fed = federation_for(cfg)
    parts = []
    for pid in range(len(fed.clients)):
        data = fed.partition_data(pid)
        model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, cfg["seed"])
        parts.append(evaluate(model, data, cfg["tasks"]))
    return combine(parts)


@pytest.fixture
def untrained_metrics():
    return _untrained_metrics


class Interrupt(KeyboardInterrupt):
    """The Ctrl-C `stop_after` raises inside a run."""


@pytest.fixture
def stop_after(monkeypatch):
    """stop_after(cfg, out, rnd, where="after-save"): run the composed `cfg` into `out` and stop
    when round `rnd` ends, like Ctrl-C: after its checkpoint (`after-save`), before it
    (`before-save`: the metrics row is already written), or in the middle of writing it
    (`mid-save`: after server.pkl, before the client states). The checkpointer is restored."""
    from fedmtl.federation import resume as ck
    from fedmtl.simulate import run

    def stop(cfg: dict, out, rnd: int, where: str = "after-save") -> None:
        real_save = ck.Checkpointer.save

        def save(self, r, *args, **kwargs):
            if r == rnd and where == "before-save":
                raise Interrupt
            if r == rnd and where == "mid-save":
                def broken(folder):
                    raise Interrupt
                self.grid.save_client_states = broken
            real_save(self, r, *args, **kwargs)
            if r == rnd:
                raise Interrupt

        with monkeypatch.context() as m:
            m.setattr(ck.Checkpointer, "save", save)
            with pytest.raises(Interrupt):
                run(cfg, out)

    return stop


@pytest.fixture(autouse=True)
def _run_identity():
    """Flower's Message() reads the current run and node ids, which an engine sets when it runs;
    a test that builds messages by hand must not depend on an earlier test having run one."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("run_id", 1), ("node_id", 0), ("task_id", 0)):
        if getattr(TaskIdentity, f"_{key}") is None:
            setattr(TaskIdentity, key, value)
    yield


def _quantisation_bound(cfg: dict, clients: list[int]) -> float:
    """SecAgg+ rounds each client's weighted value w_i/W * x to a step 2*clip/Q: the mean's error
    is at most clients * step / sum(w_i/W), plus float32 rounding."""
    p = cfg["privacy"]
    fed = federation_for(cfg)
    counts = fed.split.train.groupby("user").size()
    weights = [int(counts.reindex(fed.clients[pid]).fillna(0).sum()) for pid in clients]
    step = 2 * p["clipping_range"] / p["quantization_range"]
    return len(clients) * step / (sum(weights) / max_weight(cfg)) + 1e-6


@pytest.fixture
def quantisation_bound():
    """How far a SecAgg+ mean over `clients` may lie from the plain FedAvg mean."""
    return _quantisation_bound
