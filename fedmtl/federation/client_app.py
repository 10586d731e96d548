"""The Flower ClientApp: moves records in and out of the core's train/evaluate."""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..config_types import RunConfig
from ..client_step import evaluate_client, run_setup, train_client, train_config  # noqa: F401 (train_config: tests)
from ..itemitem import clip_parts, dp_gram, gram_parts
from .arrays import record as fast_record
from .deployed import node_data
from .faults import before_training, inject_reply_mod
from .client_state import config_from_context, shared_values, state_values, store_state
from ..privacy_floor import check_gram, client_floor
from .client_privacy import client_privacy_mod


def _client_data(cfg, context: Context):
    """(partition id, this client's data): its partition, or a deployed node's own files."""
    return node_data(cfg, context)


ITEM_ROWS_KEY = "item_item_rows"  # a client's own rows of EASE's B, kept from the whole B (secure Gram)


def own_rows(record: dict, data) -> dict:
    """The rows of the whole B (and the grid's) for this client's train items: what x_u B reads."""
    items = torch.nonzero(data.train_mask().any(dim=0)).flatten().cpu().numpy().astype(np.int64)
    return {"items": items, **{k: np.ascontiguousarray(v[items]) for k, v in record.items() if k != "whole"}}


def make_client_app(cfg: RunConfig | None = None) -> ClientApp:
    """A ClientApp bound to `cfg` (simulation), or reading it from the run config (deployment)."""
    app = ClientApp()

    # privacy= mods on the train handler only (client_privacy.py); inject_reply_mod, outermost, does nothing
    # unless the node config asks for injected hostile replies (faults.py, tests)
    @app.train(mods=[inject_reply_mod, client_privacy_mod(cfg)])
    def train(msg: Message, context: Context) -> Message:
        run_cfg = config_from_context(context, cfg)
        torch.set_num_threads(1)
        server_round = int(msg.content["config"]["server-round"])
        before_training(run_cfg, server_round, int(context.node_config["partition-id"]),  # faults.*
                        sent_at=msg.metadata.created_at)
        pid, data = _client_data(run_cfg, context)
        upload, metrics, state = train_client(run_setup(run_cfg), pid, data, shared_values(msg.content["arrays"]),
                                              state_values(context.state), server_round)
        store_state(context.state, state)
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in upload.items()}),
                                   "metrics": MetricRecord(metrics)}),
                       reply_to=msg)

    @app.evaluate()
    def evaluate_(msg: Message, context: Context) -> Message:
        run_cfg = config_from_context(context, cfg)
        torch.set_num_threads(1)
        pid, data = _client_data(run_cfg, context)
        item_item = None
        if "item_item" in msg.content:  # click_mix: rows of the server's EASE weights (itemitem.py)
            item_item = {k: v.numpy() for k, v in msg.content["item_item"].items()}
            if "whole" in item_item:  # the whole B (secure Gram): keep only this client's rows, for every evaluation
                item_item = own_rows(item_item, data)
                context.state[ITEM_ROWS_KEY] = ArrayRecord({k: Array(v) for k, v in item_item.items()})
        elif ITEM_ROWS_KEY in context.state:
            item_item = {k: v.numpy() for k, v in context.state[ITEM_ROWS_KEY].items()}
        part = evaluate_client(run_setup(run_cfg), pid, data, shared_values(msg.content["arrays"]),
                               state_values(context.state), item_item)
        return Message(RecordDict({"metrics": MetricRecord(part)}), reply_to=msg)

    @app.query(mods=[inject_reply_mod])
    def query(msg: Message, context: Context) -> Message:
        """Load this client's code and data (engine/ray.py: the warm-up before round 1); asked
        for "gram", also reply with its users' item Gram part (click_mix, itemitem.py)."""
        torch.set_num_threads(1)
        run_cfg = config_from_context(context, cfg)
        _, data = _client_data(run_cfg, context)
        if "config" in msg.content and msg.content["config"].get("query") == "gram":
            check_gram(client_floor(context.node_config, cfg), run_cfg)  # the part names its items: privacy_floor.py
            items, parts = gram_parts(run_cfg, data)
            if dp_gram(run_cfg):  # client_clip_dp: the part clipped by the client, the noise the server's
                parts = clip_parts(parts, float(run_cfg["click_mix"]["dp_clip"]))
            # arrays this process keeps (their .npy bytes made only if the reply leaves the process)
            return Message(RecordDict({"gram": fast_record({"items": items, **parts})}), reply_to=msg)
        return Message(RecordDict({}), reply_to=msg)

    return app


app = make_client_app()
