"""Helpers shared by the federation tests."""

from __future__ import annotations

import pytest

from fedmtl.data import federation_for
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


@pytest.fixture(autouse=True)
def _run_identity():
    """Flower's Message() reads the current run and node ids, which an engine sets when it runs;
    a test that builds messages by hand must not depend on an earlier test having run one."""
    from flwr.supercore.task_identity import TaskIdentity

    for key, value in (("run_id", 1), ("node_id", 0), ("task_id", 0)):
        if getattr(TaskIdentity, f"_{key}") is None:
            setattr(TaskIdentity, key, value)
    yield
