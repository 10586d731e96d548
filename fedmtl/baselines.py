"""The two reference points of every federated run, on the same core, model and split:

- centralized: all clients' training data pooled into one model;
- local: every client trains alone, nothing shared.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from .client_step import set_first_offsets
from .config_types import RunConfig
from .config import resolve_device
from .data import Federation
from .itemitem import pooled as pooled_item_item
from .local_rounds import client_round
from .metrics import combine
from .model import build_model
from .progress import progress
from .runfiles import append_jsonl
from .seeds import local_client_seed, pooled_epoch_seed, user_init_seed
from .train import evaluate, local_train, train_config
from .transfer.new_items import item_parts, new_item_view
from .weighting import build_weighting

log = logging.getLogger("fedmtl")


def epochs_of(cfg: RunConfig) -> int:
    return cfg.get("baseline_epochs") or cfg["num_rounds"] * cfg["local_epochs"]


def client_bounds(fed: Federation, data) -> tuple[np.ndarray, np.ndarray]:
    """(user bounds, test-pair bounds) of each client's block in `fed.all_data()` (users stacked
    client by client, test pairs user by user): `evaluate` then gives one part per client, so the
    pooled model's per-client tails (RMSE p90, NDCG@10 p10, ...) mean what they mean in the
    federated and local runs, and its pooled figures are unchanged."""
    ub = np.concatenate([[0], np.cumsum([len(c) for c in fed.clients])]).astype(np.int64)
    tu = data.test_u.cpu().numpy()
    if len(tu) and np.any(np.diff(tu) < 0):
        raise AssertionError("all_data: test pairs not grouped by user")
    per_user = np.concatenate([[0], np.cumsum(np.bincount(tu, minlength=len(data.users)))])
    return ub, per_user[ub]


def run_centralized(cfg: RunConfig, fed: Federation, out_dir: Path) -> dict:
    device = resolve_device(cfg)
    data = fed.all_data().to(device)
    tasks = cfg["tasks"]
    model = build_model(cfg["model"], tasks, len(data.users), data.user_cat, fed.meta, cfg["seed"]).to(device)
    set_first_offsets(model, tasks, data)  # a log's numeric label: the pooled mean
    new_item_view(model, fed.holdout.items)  # transfer.new_items: never trained, scored from features
    weighting = build_weighting(cfg["weighting"], tasks)
    epochs = epochs_of(cfg)
    item_item, mixes = pooled_item_item(cfg, data)  # click_mix: EASE on the pooled train items
    last: dict = {}
    t_start = time.time()
    for ep in range(1, epochs + 1):
        t0 = time.time()
        res = local_train(model, data, tasks, weighting, train_config(cfg, 1), seed=pooled_epoch_seed(cfg["seed"], ep))
        row = {"round": ep, "train": {f"loss.{k}": v for k, v in res.losses.items()}}
        if ep % cfg["eval_every"] == 0 or ep == epochs:
            new_item_view(model, fed.holdout.items)  # their bias: the known items' mean as it is now
            last = combine([*evaluate(model, data, tasks, item_item=item_item, mixes=mixes if ep == epochs else None,
                                      segments=client_bounds(fed, data)),
                            item_parts(model, data, tasks, fed.holdout.items)])
            row["test"] = last
        row["seconds"] = round(time.time() - t0, 3)
        append_jsonl(out_dir / "metrics.jsonl", row)
        log.info("%s  %s", progress("epoch", ep, epochs, t_start),
                 "  ".join(f"{k}={v:.4f}" for k, v in row.get("test", {}).items() if "_p" not in k))
    return {"metrics": last, "epochs": epochs}


def run_local(cfg: RunConfig, fed: Federation, out_dir: Path) -> dict:
    device = resolve_device(cfg)
    tasks = cfg["tasks"]
    epochs = epochs_of(cfg)
    parts = []
    t0 = time.time()
    n = len(fed.clients)
    for pid in range(n):
        data = fed.partition_data(pid).to(device)
        torch.manual_seed(user_init_seed(cfg["seed"], pid))  # the global RNG (dropout); user embeddings: build_model's
        model = build_model(cfg["model"], tasks, len(data.users), data.user_cat, fed.meta, cfg["seed"]).to(device)
        set_first_offsets(model, tasks, data)
        new_item_view(model, fed.holdout.items)
        weighting = build_weighting(cfg["weighting"], tasks)
        client_round(model, data, tasks, weighting, train_config(cfg, epochs), cfg,
                     seed=local_client_seed(cfg["seed"], pid))
        new_item_view(model, fed.holdout.items)
        item_item, mixes = pooled_item_item(cfg, data)  # click_mix: this client's own items only
        parts.append(evaluate(model, data, tasks, item_item=item_item, mixes=mixes)
                     | item_parts(model, data, tasks, fed.holdout.items))
        if (pid + 1) % max(1, n // 10) == 0 or pid + 1 == n:
            log.info("local-only: %s", progress("clients trained", pid + 1, n, t0))
    final = combine(parts)
    append_jsonl(out_dir / "metrics.jsonl", {"round": epochs, "test": final, "seconds": round(time.time() - t0, 3)})
    return {"metrics": final, "epochs": epochs}
