"""The Flower ServerApp: Flower's strategy over the shared encoder, one round at a time.

The round loop is the same as `Strategy.start` (configure_train, send_and_receive,
aggregate_train, then the same for evaluation), written out so that every round
is logged to metrics.jsonl with its timing, client counts and bytes as it ends.
"""

from __future__ import annotations

import logging
import random
import time
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from .. import checkpoint
from ..data import federation_for
from ..metrics import HEADLINE
from ..model import build_model, shared_names
from ..results import append_jsonl, write_json
from .client_state import config_from_context
from .strategies import build_strategy

log = logging.getLogger("fedmtl")


def initial_arrays(cfg: dict) -> ArrayRecord:
    """The shared parameters at round 0, from the same seeded build every client uses."""
    fed = federation_for(cfg)
    model = build_model(cfg["model"], cfg["tasks"], 1, np.zeros((1, len(fed.dataset.user_cards)), np.int64),
                        fed.meta, cfg["seed"])
    params = dict(model.named_parameters())
    arrays = {n: params[n].detach().numpy().copy() for n in shared_names(model, cfg["aggregate"])}
    arrays = checkpoint.init_shared(cfg, arrays, fed.meta)  # init.from=RUN_DIR, if set
    return ArrayRecord({n: Array(a) for n, a in arrays.items()})


def _bytes(records) -> int:
    return int(sum(r.count_bytes() for r in records))


def format_metrics(m: dict, tasks) -> str:
    keys = {"rating": ["rating.rmse", "rating.mae"], "like": ["like.auc", "like.logloss"],
            "click": ["click.hr@10", "click.ndcg@10"]}
    return "  ".join(f"{k.split('.', 1)[1] if '.' in k else k}={m[k]:.4f}" for t in tasks for k in keys[t] if k in m)


def run_rounds(grid: Grid, cfg: dict, out_dir: Path) -> dict:
    random.seed(cfg["seed"])  # Flower samples nodes with `random`
    strategy = build_strategy(cfg)
    arrays = initial_arrays(cfg)
    metrics_path = out_dir / "metrics.jsonl"
    t_start = time.time()
    last_eval: dict = {}
    history = []
    n_rounds = cfg["num_rounds"]
    for rnd in range(1, n_rounds + 1):
        t0 = time.time()
        train_cfg = ConfigRecord({"local-epochs": cfg["local_epochs"]})
        msgs = list(strategy.configure_train(rnd, arrays, train_cfg, grid))
        down = sum(m.content["arrays"].count_bytes() for m in msgs)
        replies = list(grid.send_and_receive(msgs, timeout=cfg["round_timeout"]))
        ok = [r for r in replies if not r.has_error()]
        up = _bytes(r.content["arrays"] for r in ok)
        agg, train_metrics = strategy.aggregate_train(rnd, replies)
        if agg is not None:
            arrays = agg
        else:
            log.warning("round %d: no update aggregated (%d of %d clients answered)", rnd, len(ok), len(msgs))
        row = {"round": rnd, "sampled": len(msgs), "answered": len(ok), "failed": len(msgs) - len(ok),
               "bytes_down": int(down), "bytes_up": int(up),
               "bytes_up_per_client": int(up / max(len(ok), 1)), "train": dict(train_metrics or {})}
        if rnd % cfg["eval_every"] == 0 or rnd == n_rounds:
            emsgs = list(strategy.configure_evaluate(rnd, arrays, ConfigRecord({}), grid))
            row["bytes_down"] += sum(m.content["arrays"].count_bytes() for m in emsgs)
            ereplies = list(grid.send_and_receive(emsgs, timeout=cfg["round_timeout"]))
            ev = strategy.aggregate_evaluate(rnd, ereplies)
            if ev is not None:
                last_eval = dict(ev)
                row["test"] = last_eval
        row["seconds"] = round(time.time() - t0, 3)
        append_jsonl(metrics_path, row)
        history.append(row)
        log.info("round %d/%d  %.1fs  clients %d/%d  loss %s  %s", rnd, n_rounds, row["seconds"], len(ok),
                 len(msgs), " ".join(f"{k[5:]}={v:.3f}" for k, v in row["train"].items() if k.startswith("loss.")),
                 format_metrics(row.get("test", {}), cfg["tasks"]))
    if cfg.get("save_model", True):
        checkpoint.save(out_dir, cfg, {k: v.numpy() for k, v in arrays.items()}, federation_for(cfg).meta, n_rounds)
    return {"metrics": last_eval, "seconds": round(time.time() - t_start, 2), "rounds": len(history),
            "bytes_up_total": sum(h["bytes_up"] for h in history),
            "bytes_down_total": sum(h["bytes_down"] for h in history)}


def make_server_app(cfg: dict | None = None, result_sink: dict | None = None) -> ServerApp:
    """A ServerApp bound to `cfg`; `result_sink` (a dict) receives the run summary."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        run_cfg = config_from_context(context, cfg)
        out_dir = Path(run_cfg.get("output_dir") or context.run_config.get("output-dir", "outputs/deployed"))
        out_dir.mkdir(parents=True, exist_ok=True)
        summary = run_rounds(grid, run_cfg, out_dir)
        if result_sink is not None:
            result_sink.update(summary)

    return app


app = make_server_app()
