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
