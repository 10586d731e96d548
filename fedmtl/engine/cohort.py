"""backend=cohort: the in-process grid, with a round's clients as one batched computation.

`CohortGrid` is `InProcessGrid` (the same node ids, the same per-node `Context`, the same
client-state checkpoints) except that `send_and_receive` hands every plain training
message of a round at once to `fedmtl.cohort.train_cohort`, which trains all those clients
as one batched computation, and every evaluation message at once to
`fedmtl.cohort.evaluate_cohort`, and answers each with the reply the ClientApp would have
given (the same arrays and metrics, to float tolerance; tests/engine/test_cohort.py).
Under SecAgg+ (secagg, secagg_dp) the training requests ride on the protocol's
collect-masked-vectors stage: those are batched the same way, and each batched reply then
goes through the train handler's mods (secaggplus_mod masks it) in place of the handler's.
Everything else goes through the ClientApp exactly as under backend=inprocess: query
messages, SecAgg+'s other stages and its secure item Gram, a training request below a
client's own privacy floor (it refuses it), and every message of a run whose knobs the
batch does not implement (`fedmtl.cohort.unbatched`: the run says which, once, at start-up).
Under central_dp, client_clip_dp and local_dp each batched reply passes through the train
handler's privacy mod (federation/client_privacy.py: the client's floor, Flower's clipping, the
noise from the OS CSPRNG) before it is sent, as the ClientApp's reply would.

`backend.workers=N` (N > 1) runs the clients on N worker processes (InProcessGrid's, node k on
worker k % N), each answering its nodes of a round as one batch (`worker_answer`); the server's
screening and aggregation stay in the main process. A worker sends its training replies in parts
as its chunks finish (the grid reads them and the server checks them while the rest train), and
once a round is answered prepares the next round's clients on a low-priority thread (ahead.py),
while the server aggregates.
It uses torch's threads (`backend.threads`, 0 = every core this process may use; the
default 1, because on a machine whose cores are busy with other work more threads wait for
one another: 2-5x slower on this project's 2 shared cores), and `device=cuda` puts the
whole batch on the GPU (not measured: no GPU was at hand). A round's
clients are trained in chunks of about `backend.chunk_mb` of tensors. A batched client's
reply is never late (round_timeout: the injected stragglers of faults.* go through the
ClientApp, as every other unbatched knob).
"""

from __future__ import annotations

import functools
import logging
import uuid

import torch
from flwr.app import Array, ArrayRecord, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.clientapp import ClientApp

from ..config_types import RunConfig
from ..client_step import run_setup
from ..cohort import CHUNK_MB, EvalJob, Job, evaluate_cohort, prepared_for, train_cohort, unbatched
from ..errors import FedMTLError
from ..federation.arrays import metric_record, record as fast_record, rows_source
from ..knob_names import SECAGG_MODES
from ..jobs import usable_cores
from .ahead import Ahead
from .inprocess import InProcessGrid, run_on_grid
from .nodes import NODE_ID_OFFSET, handle, no_cyclic_gc

log = logging.getLogger("fedmtl")


def _threads(n: int) -> int:
    """backend.threads: n, or with 0 every core this process may use."""
    return int(n) if n and n > 0 else usable_cores()


class CohortGrid(InProcessGrid):
    def __init__(self, client_app: ClientApp, num_nodes: int, cfg: RunConfig, run_id: int = 1,
                 run_config: dict | None = None, state_dir=None, announce: bool = True):
        """announce: say at start-up how the clients are answered (a worker's grid does not: run_cohort says it once)."""
        super().__init__(client_app, num_nodes, run_id=run_id, run_config=run_config, workers=1, state_dir=state_dir)
        self.cfg = cfg
        bcfg = cfg["backend"]
        # config.validate checked both (a bad value is one line at start-up, not a failed worker process)
        self.threads, self.chunk_mb = _threads(bcfg.get("threads", 1)), float(bcfg.get("chunk_mb", CHUNK_MB))
        self.reasons = unbatched(cfg)
        self.secure = cfg["privacy"]["name"] in SECAGG_MODES  # SecAgg+: its collect stage's training is batched
        # central_dp, client_clip_dp, local_dp: each batched reply goes through the train handler's
        # privacy mod (the client's floor, then Flower's clipping and the mode's noise), as the ClientApp's would
        from ..federation.client_privacy import client_privacy_mod
        self.privacy = client_privacy_mod(cfg) if cfg["privacy"]["name"] != "none" else None
        self.data: dict[int, object] = {}  # partition id -> its ClientData (states in memory only)
        self.ahead: Ahead | None = None  # a worker's: the next round's clients, prepared while the server aggregates
        self.refused = self._floor_refuses()
        if announce and self.reasons:
            log.info("backend=cohort: training goes client by client through the ClientApp (not batched: %s)",
                     "; ".join(self.reasons))
        elif announce:
            log.info("backend=cohort: each round's clients train as one batch (%d threads, chunks of ~%g MB)",
                     self.threads, self.chunk_mb)

    def _floor_refuses(self) -> bool:
        """Whether the clients' own floor (client_privacy.client_privacy_mod; this grid's nodes have no node
        config of their own, so the run's client_floor) refuses this run's training requests: then
        the ClientApp gives its refusal."""
        from ..privacy_floor import check_train, client_floor
        from ..federation.accounting import own_noise_multiplier

        try:
            check_train(client_floor({}, self.cfg), self.cfg, self.secure, own_noise_multiplier(self.cfg))
        except FedMTLError:
            return True
        return False

    def _grid_node(self, msg: Message) -> bool:
        """Whether the message is for one of this grid's nodes."""
        return NODE_ID_OFFSET <= msg.metadata.dst_node_id < NODE_ID_OFFSET + self.states.num_nodes

    def _batchable(self, msg: Message) -> bool:
        """A plain training or evaluation request the batch may answer (else: the ClientApp)."""
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

        if self.reasons or not msg.has_content():
            return False
        node = msg.metadata.dst_node_id
        c = msg.content
        if not self._grid_node(msg) or "arrays" not in c:
            return False
        if msg.metadata.message_type == MessageType.EVALUATE:
            # click_mix's whole B (the secure Gram's), or the rows a client kept from it: the ClientApp's
            from ..federation.client_app import ITEM_ROWS_KEY
            if "item_item" in c:
                return "whole" not in c["item_item"]
            return ITEM_ROWS_KEY not in self.states.get(node).state
        if self.refused or msg.metadata.message_type != MessageType.TRAIN or RECORD_KEY_CONFIGS in c:
            return False
        return "config" in c and "server-round" in c["config"]

    def _secagg_fitins(self, msg: Message):
        """SecAgg+'s collect-masked-vectors message that carries a training request (legacy
        FitIns), to be batched: its FitIns; None for everything else."""
        if (self.reasons or self.refused or not self.secure or msg.metadata.message_type != MessageType.TRAIN
                or not self._grid_node(msg)):
            return None
        from ..federation.legacy import collect_stage_fitins
        return collect_stage_fitins(msg)

    def answer(self, messages: list[Message], timeout=None, *, part=None) -> list[Message]:
        """The replies to messages that have their ids: the batch's where it answers, the ClientApp's elsewhere.
        part(replies) (a worker's): the plain training batch's replies go to it a chunk of clients at a
        time, as soon as made, and are not returned (the worker sends each part while the next trains)."""
        batch = [m for m in messages if self._batchable(m)]
        secure = [(m, f) for m in messages if (f := self._secagg_fitins(m)) is not None]
        replies: dict[int, Message | None] = {}
        sent: set[int] = set()  # the messages whose replies went to `part` already (None below: not returned)
        if batch or secure:
            train = [m.metadata.message_type == MessageType.TRAIN for m in batch]
            with no_cyclic_gc():
                try:
                    replies.update(self._train_batch([m for m, t in zip(batch, train) if t], part, sent))
                    replies.update(self._evaluate_batch([m for m, t in zip(batch, train) if not t]))
                    replies.update(self._secagg_batch(secure))
                except FedMTLError:
                    raise
                except Exception as ex:  # noqa: BLE001 the batch failed: each client on its own, as inprocess
                    log.warning("backend=cohort: the batched round failed (%s: %s); its %d messages go through the "
                                "ClientApp", type(ex).__name__, ex, len(batch) + len(secure) - len(sent))
                    replies = {}
        replies.update((k, None) for k in sent)  # answered (and their states stored) before the failure, if one
        for m in messages:
            if id(m) not in replies:
                replies[id(m)] = handle(self.client_app, self.states, m, timeout)
        self.states.commit()
        return [replies[id(m)] for m in messages if replies[id(m)] is not None]

    def _client(self, m: Message):
        """(the message's node Context, partition id, its ClientData)."""
        from ..federation.deployed import node_data

        ctx = self.states.get(m.metadata.dst_node_id)
        pid = m.metadata.dst_node_id - NODE_ID_OFFSET
        data = self.data.get(pid)
        if data is None:
            pid, data = node_data(self.cfg, ctx)
            if self.states.db is None:  # bounded memory (state on disk): read each round
                self.data[pid] = data
        return ctx, pid, data

    @staticmethod
    def _groups(msgs: list[Message]) -> list[list[Message]]:
        """Messages sharing one arrays record (every message of a round, usually)."""
        groups: dict[int, list] = {}
        for m in msgs:
            groups.setdefault(id(m.content["arrays"]), []).append(m)
        return list(groups.values())

    def _evaluate_batch(self, msgs: list[Message]) -> dict[int, Message]:
        from ..federation.client_state import shared_values, state_values

        out = {}
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for group in self._groups(msgs):
                jobs = []
                for m in group:
                    ctx, pid, data = self._client(m)
                    ii = ({k: rows_source(v) for k, v in m.content["item_item"].items()} if "item_item" in m.content
                          else None)
                    jobs.append(EvalJob(pid, data, state_values(ctx.state), ii))
                parts = evaluate_cohort(run_setup(self.cfg), shared_values(group[0].content["arrays"]),
                                                     jobs)
                for m, part in zip(group, parts):
                    reply = Message(RecordDict({"metrics": metric_record(part)}), reply_to=m)
                    reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                    out[id(m)] = reply
        finally:
            torch.set_num_threads(prev)
        return out

    def _trained(self, groups: list[tuple], on_chunk=None) -> list[tuple]:
        """Each group, (shared arrays, [(message, server round), ...]), trained as one batch at the
        batch's thread count: [(message, its node Context, (upload, metrics, state)), ...];
        on_chunk(the same triples of a chunk) as each chunk of clients is trained."""
        from ..federation.client_state import state_values

        if not groups:  # (an evaluation's answer: the round prepared ahead waits for its training)
            return []
        setup = run_setup(self.cfg)
        out = []
        prepared = self.ahead.take() if self.ahead is not None else None
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            for shared, members in groups:
                clients = [(m, rnd, *self._client(m)) for m, rnd in members]  # message, round, ctx, pid, data
                jobs = [Job(pid, data, state_values(ctx.state), rnd) for _, rnd, ctx, pid, data in clients]
                if prepared is not None:
                    used = sum(prepared_for(prepared, j) is not None for j in jobs)
                    log.debug("backend=cohort: %d of %d clients of round %d were prepared ahead", used, len(jobs),
                              jobs[0].server_round if jobs else 0)
                each = None if on_chunk is None else (
                    lambda idx, res, clients=clients: on_chunk([(clients[i][0], clients[i][2], r)
                                                                for i, r in zip(idx, res)]))
                results = train_cohort(setup, shared, jobs, self.chunk_mb, prepared, each)
                out += [(m, ctx, result) for (m, _, ctx, _, _), result in zip(clients, results)]
        finally:
            torch.set_num_threads(prev)
        if self.ahead is not None and len(groups) == 1 and self.states.db is None:
            # the next round's guess: the same clients, one round on (each client's data is kept: states in memory)
            self.ahead.plan(setup, [Job(j.pid, j.data, {}, j.server_round + 1) for j in jobs])
        return out

    def _train_batch(self, msgs: list[Message], part=None, sent: set | None = None) -> dict[int, Message]:
        """The training messages' replies (part: each chunk's go to it as made, their ids into `sent`)."""
        from ..federation.client_state import shared_values

        if not msgs:
            return {}
        groups = [(shared_values(group[0].content["arrays"]),
                   [(m, int(m.content["config"]["server-round"])) for m in group]) for group in self._groups(msgs)]

        def made(trained) -> dict[int, Message]:
            out, new_states = {}, []
            for m, ctx, (upload, metrics, state) in trained:
                reply = Message(RecordDict({"arrays": fast_record(upload), "metrics": metric_record(metrics)}),
                                reply_to=m)
                reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
                if self.privacy is not None:  # the train handler's privacy mods, on the batched reply
                    reply = self.privacy(m, ctx, lambda _msg, _ctx, reply=reply: reply)
                out[id(m)] = reply
                new_states.append((m.metadata.dst_node_id, ctx, {k: fast_record(a) for k, a in state.items()}))
            for node, ctx, records in new_states:  # only once these replies are made (a failed batch changes
                for key, record in records.items():  # no state of a client it did not answer); client_state.store_state
                    ctx.state[key] = record
                self.states.put(node, ctx)
            return out

        if part is None:
            return made(self._trained(groups))

        def chunk_done(trained) -> None:
            out = made(trained)
            part([out[id(m)] for m, _, _ in trained])
            sent.update(out)

        self._trained(groups, chunk_done)
        return {}

    def _secagg_batch(self, msgs: list) -> dict[int, Message]:
        """SecAgg+ (secagg, secagg_dp): the collect-masked-vectors stage carries each client's
        training request. Every client is trained as one batch, then each message goes through
        the train handler's privacy mod exactly as under the ClientApp (the floor, Flower's
        secaggplus_mod masking the reply, LegacyFitMod, under secagg_dp Flower's clipping and the
        client's noise share), with the batch's reply where the train handler's would be; the
        protocol's other stages are the ClientApp's. A client whose chain fails (a non-finite
        update) fails as under the ClientApp (handle: an error reply)."""
        from ..federation.client_state import shared_values, store_state
        from ..federation.legacy import train_request

        groups: list[tuple] = []  # (round, tensors, shared arrays, members): one per model sent (one a round, usually)
        for m, fitins in msgs:
            rnd, tensors = int(fitins.config["server-round"]), fitins.parameters.tensors
            # each node's FitIns record is its own, their tensors the same bytes (compared by identity first)
            group = next((g for g in groups if g[0] == rnd and g[1] == tensors), None)
            if group is None:
                names, nds, _ = train_request(fitins)
                group = (rnd, tensors, shared_values(ArrayRecord({n: Array(a) for n, a in zip(names, nds)})), [])
                groups.append(group)
            group[3].append((m, rnd))
        out = {}
        for m, _, (upload, metrics, state) in self._trained([(shared, members) for _, _, shared, members in groups]):
            reply = Message(RecordDict({"arrays": fast_record(upload), "metrics": metric_record(metrics)}), reply_to=m)

            def handler(_msg, ctx, reply=reply, state=state):  # the train handler's part: store, reply
                store_state(ctx.state, state)
                return reply

            out[id(m)] = handle(lambda msg, ctx, handler=handler: self.privacy(msg, ctx, handler), self.states, m)
        return out


class _WorkerAnswer:
    """A worker process's answer(messages, timeout, send) (InProcessGrid's workers): its nodes of a
    round as one batch, the training replies sent with `send` (a part of the answer) an eighth of
    the clients or so at a time as their chunks finish, so that the server reads and checks them
    while the rest train; `idle()`, called once the answer is sent, prepares the next round's clients ahead."""

    PARTS = 8  # a round's answer in about this many parts: each about an eighth of the clients, or more
    sends_parts = True

    def __init__(self, grid: CohortGrid):
        self.grid = grid
        grid.ahead = Ahead()

    def __call__(self, messages, timeout=None, send=None):
        if send is None:
            return self.grid.answer(messages, timeout)
        held: list = []
        size = max(1, len(messages) // self.PARTS)

        def part(replies) -> None:
            held.extend(replies)
            if len(held) >= size:
                send(held[:])
                held.clear()

        rest = self.grid.answer(messages, timeout, part=part)
        return held + rest

    def idle(self) -> None:
        self.grid.ahead.start()


def worker_answer(cfg: RunConfig, client_app: ClientApp, num_nodes: int, run_id: int, run_config: dict, states):
    """A worker process's answer (InProcessGrid's workers; _WorkerAnswer)."""
    grid = CohortGrid(client_app, num_nodes, cfg, run_id=run_id, run_config=run_config, announce=False)
    grid.states = states
    return _WorkerAnswer(grid)


def run_cohort(server_app, client_app, num_nodes: int, cfg: RunConfig, run_config: dict | None = None,
               state_dir=None, workers: int = 1) -> None:
    """Run the ServerApp's main function on a cohort grid; workers > 1: on worker processes, node
    k on worker k % workers, each answering its nodes of a round as one batch (CohortGrid.answer)."""
    if workers <= 1:
        grid = CohortGrid(client_app, num_nodes, cfg, run_config=run_config, state_dir=state_dir)
    else:
        reasons = unbatched(cfg)
        log.info("backend=cohort: %d worker processes, each %s", workers,
                 f"sending its clients through the ClientApp (not batched: {'; '.join(reasons)})" if reasons else
                 f"training its clients of a round as one batch ({_threads(cfg['backend'].get('threads', 1))} "
                 f"threads, chunks of ~{cfg['backend'].get('chunk_mb', CHUNK_MB):g} MB)")
        grid = InProcessGrid(client_app, num_nodes, run_config=run_config, workers=workers, state_dir=state_dir,
                             worker_answer=functools.partial(worker_answer, cfg))
    run_on_grid(server_app, grid, run_config)

