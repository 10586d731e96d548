"""The Flower ClientApp: moves records in and out of the core's train/evaluate."""

from __future__ import annotations

from dataclasses import replace

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .. import transfer
from ..itemitem import Rows, blends, gram_part
from ..model import get_arrays, shared_names
from ..schedule import client_round
from ..tasks import click_candidates
from ..train import TrainConfig, evaluate, train_config as make_train_config
from .deployment import node_data
from .faults import before_training, inject_reply_mod
from .client_state import (client_model, client_weighting, config_from_context, load_shared, save_personal,
                           save_weighting, shared_record, sparse_rows)
from .floor import check_gram, client_floor
from .privacy import client_privacy_mod


def _client_data(cfg, context: Context):
    """(partition id, this client's data): its partition, or a deployed node's own files."""
    return node_data(cfg, context)


def train_config(cfg: dict) -> TrainConfig:
    prox = cfg["strategy"].get("proximal_mu", 0.0) if cfg["strategy"]["name"] == "fedprox" else 0.0
    return make_train_config(cfg, cfg["local_epochs"], prox)


def item_item_blends(cfg: dict, record: ArrayRecord, device):
    """click_mix: (the run's blend, {grid group: blend}) from the rows of B the server sent
    ("b": at click_mix.lam; "grid@<lam>": the selection grid's, final evaluation only)."""
    items = torch.from_numpy(record["items"].numpy()).to(device)
    rows = lambda key: Rows(items, torch.from_numpy(record[key].numpy()).to(device))  # noqa: E731
    grid = {float(k.split("@", 1)[1]): rows(k) for k in record if k.startswith("grid@")}
    return blends(cfg, rows("b") if "b" in record else None, grid)


def make_client_app(cfg: dict | None = None) -> ClientApp:
    """A ClientApp bound to `cfg` (simulation), or reading it from the run config (deployment)."""
    app = ClientApp()

    # privacy= mods on the train handler only (privacy.py); inject_reply_mod, outermost, does nothing
    # unless the node config asks for injected hostile replies (faults.py, tests)
    @app.train(mods=[inject_reply_mod, client_privacy_mod(cfg)])
    def train(msg: Message, context: Context) -> Message:
        run_cfg = config_from_context(context, cfg)
        torch.set_num_threads(1)
        server_round = int(msg.content["config"]["server-round"])
        before_training(run_cfg, server_round, int(context.node_config["partition-id"]),  # faults.*
                        sent_at=msg.metadata.created_at)
        pid, data = _client_data(run_cfg, context)
        model = client_model(run_cfg, data, context.state, pid)
        load_shared(model, msg.content["arrays"])
        transfer.client_view(model, run_cfg)  # new items: features only, never trained
        weighting = client_weighting(run_cfg, context.state)
        seed = run_cfg["seed"] * 7_919 + server_round * 100_003 + pid
        tcfg, rows, received = train_config(run_cfg), sparse_rows(run_cfg, data, model.n_items, seed), None
        if rows is not None:  # exchange=sparse: the click loss runs over the rows it will send
            received = get_arrays(model, shared_names(model, run_cfg["aggregate"]))
            tcfg = replace(tcfg, candidates=click_candidates(rows, data.train_i.cpu().numpy(), model.n_items,
                                                             data.train_i.device))
        result = client_round(model, data, run_cfg["tasks"], weighting, tcfg, run_cfg, seed=seed)
        save_personal(model, run_cfg, context.state)
        save_weighting(weighting, context.state)
        metrics = {"num-examples": result.num_examples}
        metrics.update({f"loss.{t}": v for t, v in result.losses.items()})
        metrics.update({f"weight.{t}": v for t, v in result.weights.items()})
        return Message(RecordDict({"arrays": shared_record(model, run_cfg, received, rows, seed),
                                   "metrics": MetricRecord(metrics)}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        run_cfg = config_from_context(context, cfg)
        torch.set_num_threads(1)
        pid, data = _client_data(run_cfg, context)
        model = client_model(run_cfg, data, context.state, pid)
        load_shared(model, msg.content["arrays"])
        transfer.client_view(model, run_cfg)
        item_item, mixes = None, None
        if "item_item" in msg.content:  # click_mix: rows of the server's EASE weights (itemitem.py)
            item_item, mixes = item_item_blends(run_cfg, msg.content["item_item"], data.train_u.device)
        part = evaluate(model, data, run_cfg["tasks"], item_item=item_item, mixes=mixes)
        part.update(transfer.item_parts(model, data, run_cfg["tasks"], transfer.hidden_items(run_cfg)))
        part["num-examples"] = int(len(data.test_u))
        return Message(RecordDict({"metrics": MetricRecord(part)}), reply_to=msg)

    @app.query(mods=[inject_reply_mod])
    def query(msg: Message, context: Context) -> Message:
        """Load this client's code and data (engine/ray.py: the warm-up before round 1); asked
        for "gram", also reply with its users' item Gram part (click_mix, itemitem.py)."""
        torch.set_num_threads(1)
        run_cfg = config_from_context(context, cfg)
        _, data = _client_data(run_cfg, context)
        if "config" in msg.content and msg.content["config"].get("query") == "gram":
            check_gram(client_floor(context.node_config, cfg), run_cfg)  # the part names its items: floor.py
            items, block = gram_part(data.train_mask())
            return Message(RecordDict({"gram": ArrayRecord({"items": Array(items), "block": Array(block)})}),
                           reply_to=msg)
        return Message(RecordDict({}), reply_to=msg)

    return app


app = make_client_app()
