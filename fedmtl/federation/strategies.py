"""Flower's own strategies, configured from `strategy=` (never re-implemented here)."""

from __future__ import annotations

from flwr.app import MetricRecord, RecordDict
from flwr.serverapp import strategy as fs

from ..errors import ConfigError
from ..metrics import combine

CLASSES = {"fedavg": fs.FedAvg}


def evaluate_aggregation(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Combine the clients' metric parts into the PROTOCOL.md figures (pooled AUC,
    example-weighted errors, per-user ranking means, spread over clients)."""
    parts = [dict(rec["metrics"]) for rec in records]
    out = combine(parts)
    out["clients"] = len(parts)
    return MetricRecord(out)


def build_strategy(cfg: dict):
    scfg = dict(cfg["strategy"])
    name = scfg.pop("name")
    if name not in CLASSES:
        raise ConfigError(f"strategy={name}: expected one of {sorted(CLASSES)}")
    common = dict(
        fraction_train=cfg["fraction_train"],
        fraction_evaluate=cfg["fraction_evaluate"],
        min_train_nodes=min(cfg["min_train_clients"], cfg["num_clients"]),
        min_evaluate_nodes=min(cfg["min_evaluate_clients"], cfg["num_clients"]),
        min_available_nodes=min(cfg["min_train_clients"], cfg["num_clients"]),
        evaluate_metrics_aggr_fn=evaluate_aggregation,
    )
    try:
        return CLASSES[name](**common, **scfg)
    except TypeError as e:
        raise ConfigError(f"strategy={name}: {e}") from None
