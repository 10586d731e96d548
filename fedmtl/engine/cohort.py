"""backend=cohort: the in-process grid, with a round's training messages trained as one batch.

`CohortGrid` is `InProcessGrid` (the same node ids, the same per-node `Context`, the same
client-state checkpoints) except that `send_and_receive` hands every plain training
message of a round at once to `cohort_train.train_cohort`, which trains all those clients
as one batched computation, and answers each with the reply the ClientApp would have given
(the same arrays and metrics, to float tolerance; tests/engine/test_cohort.py). Everything
else goes through the ClientApp exactly as under backend=inprocess: evaluation and query
messages, SecAgg+ messages, a request below a client's own privacy floor (it refuses it),
and every training message of a run whose knobs the batch does not implement
(`cohort_train.unbatched`: the run says which, once, at start-up).

It uses the machine's cores through torch's threads (`backend.threads`, 0 = every core
this process may use), and `device=cuda` puts the whole batch on the GPU. A round's
clients are trained in chunks of about `backend.chunk_mb` of tensors.
"""

from __future__ import annotations

import logging
import os
import uuid

import torch
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from .. import cohort_train
from ..client_step import run_setup
from ..errors import FedMTLError
from .inprocess import NODE_ID_OFFSET, InProcessGrid, handle

log = logging.getLogger("fedmtl")


def _threads(n: int) -> int:
    if n and n > 0:
        return int(n)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class CohortGrid(InProcessGrid):
    def __init__(self, client_app: ClientApp, num_nodes: int, cfg: dict, run_id: int = 1,
                 run_config: dict | None = None, state_dir=None):
        super().__init__(client_app, num_nodes, run_id=run_id, run_config=run_config, workers=1, state_dir=state_dir)
        self.cfg = cfg
        bcfg = cfg.get("backend") or {}
        self.threads = _threads(int(bcfg.get("threads", 0) or 0))
        self.chunk_mb = float(bcfg.get("chunk_mb", 1024))
        self.reasons = cohort_train.unbatched(cfg)
        self.refused = self._floor_refuses()
        if self.reasons:
            log.info("backend=cohort: training goes client by client through the ClientApp (not batched: %s)",
                     "; ".join(self.reasons))
        else:
            log.info("backend=cohort: each round's clients train as one batch (%d threads, chunks of ~%g MB)",
                     self.threads, self.chunk_mb)

    def _floor_refuses(self) -> bool:
        """Whether the clients' own floor (privacy.client_privacy_mod; this grid's nodes have no node
        config of their own, so the run's client_floor) refuses this run's training requests: then
        the ClientApp gives its refusal."""
        from ..federation.floor import check_train, client_floor
        from ..federation.privacy import own_noise_multiplier

        try:
            check_train(client_floor({}, self.cfg), self.cfg, False, own_noise_multiplier(self.cfg))
        except FedMTLError:
            return True
        return False

    def _batchable(self, msg: Message) -> bool:
        """A plain training request this engine may train in the batch (else: the ClientApp)."""
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

        if self.reasons or self.refused or msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
            return False
        node = msg.metadata.dst_node_id
        c = msg.content
        if not NODE_ID_OFFSET <= node < NODE_ID_OFFSET + self.states.num_nodes or RECORD_KEY_CONFIGS in c:
            return False
        return "arrays" in c and "config" in c and "server-round" in c["config"]

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        batch = [m for m in messages if self._batchable(m)]
        replies: dict[int, Message | None] = {}
        if batch:
            try:
                replies.update(self._train_batch(batch))
            except FedMTLError:
                raise
            except Exception as ex:  # noqa: BLE001 the batch failed: each client on its own, as inprocess
                log.warning("backend=cohort: the batched round failed (%s: %s); its %d clients go through the "
                            "ClientApp", type(ex).__name__, ex, len(batch))
                replies = {}
        for m in messages:
            if id(m) not in replies:
                replies[id(m)] = handle(self.client_app, self.states, m, timeout)
        self.states.commit()
        return [replies[id(m)] for m in messages if replies[id(m)] is not None]

    def _train_batch(self, msgs: list[Message]) -> dict[int, Message]:
        from ..federation.client_state import shared_values, state_values, store_state
        from ..federation.deployment import node_data

        setup = run_setup(self.cfg)
        groups: dict[int, list] = {}  # messages sharing one arrays record (every message of a round, usually)
        for m in msgs:
            groups.setdefault(id(m.content["arrays"]), []).append(m)
        out = {}
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for group in groups.values():
                shared = shared_values(group[0].content["arrays"])
                jobs, ctxs = [], []
                for m in group:
                    ctx = self.states.get(m.metadata.dst_node_id)
                    pid, data = node_data(self.cfg, ctx)
                    jobs.append(cohort_train.Job(pid, data, state_values(ctx.state),
                                                 int(m.content["config"]["server-round"])))
                    ctxs.append(ctx)
                results = cohort_train.train_cohort(setup, shared, jobs, self.chunk_mb)
                for m, ctx, (upload, metrics, state) in zip(group, ctxs, results):
                    store_state(ctx.state, state)
                    self.states.put(m.metadata.dst_node_id, ctx)
                    reply = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in upload.items()}),
                                                "metrics": MetricRecord(metrics)}), reply_to=m)
                    reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                    out[id(m)] = reply
        finally:
            torch.set_num_threads(prev)
        return out


def run_cohort(server_app, client_app, num_nodes: int, cfg: dict, run_config: dict | None = None,
               state_dir=None) -> None:
    """Run the ServerApp's main function on a cohort grid."""
    grid = CohortGrid(client_app, num_nodes, cfg, run_config=run_config, state_dir=state_dir)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))
    try:
        server_app(grid, context)
    finally:
        grid.close()

