"""A Flower `Grid` that runs the ClientApp in this process, or in a few sticky workers.

The ServerApp and the strategy talk to it exactly as to Flower's own grids
(`get_node_ids`, `send_and_receive`); each message is handed to the ClientApp
with that node's persisted `Context`, as a SuperNode would, and a ClientApp
exception becomes an error reply, as in Flower's simulation engine. No Ray, no
polling: the cost of a round is the clients' own work.

- `workers > 1` spreads nodes over worker processes, node k always on worker
  k % workers, so a client's state stays where it is.
- `state_dir` keeps every node's `Context.state` in an SQLite file there
  instead of in memory: memory then grows with the clients of a round, not with
  the federation (10^5 clients), and the file survives the process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import pickle
import sqlite3
import uuid
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger("fedmtl")
NODE_ID_OFFSET = 1000  # node id = 1000 + partition id: reproducible and readable


class NodeStates:
    """Each node's `Context`, in memory or in an SQLite file (one row per node)."""

    def __init__(self, num_nodes: int, run_id: int, run_config: dict, path: Path | None = None):
        self.num_nodes, self.run_id, self.run_config = num_nodes, run_id, dict(run_config)
        self.memory: dict[int, Context] = {}
        self.db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(path))
            self.db.execute("CREATE TABLE IF NOT EXISTS state (node INTEGER PRIMARY KEY, blob BLOB)")

    def _new(self, node: int) -> Context:
        pid = node - NODE_ID_OFFSET
        return Context(run_id=self.run_id, node_id=node,
                       node_config={"partition-id": pid, "num-partitions": self.num_nodes},
                       state=RecordDict(), run_config=dict(self.run_config))

    def get(self, node: int) -> Context:
        if self.db is None:
            if node not in self.memory:
                self.memory[node] = self._new(node)
            return self.memory[node]
        ctx = self._new(node)
        row = self.db.execute("SELECT blob FROM state WHERE node = ?", (node,)).fetchone()
        if row is not None:
            ctx.state = pickle.loads(row[0])
        return ctx

    def put(self, node: int, ctx: Context) -> None:
        if self.db is not None:
            self.db.execute("INSERT OR REPLACE INTO state VALUES (?, ?)", (node, pickle.dumps(ctx.state)))

    def commit(self) -> None:
        if self.db is not None:
            self.db.commit()


def _error_reply(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def handle(client_app: ClientApp, states: NodeStates, msg: Message) -> Message:
    """Run one message through the ClientApp with its node's Context, as a SuperNode does."""
    node = msg.metadata.dst_node_id
    if not NODE_ID_OFFSET <= node < NODE_ID_OFFSET + states.num_nodes:
        return _error_reply(msg, ErrorCode.UNKNOWN, f"unknown node {node}")
    ctx = states.get(node)
    try:
        reply = client_app(msg, ctx)
        states.put(node, ctx)
    except Exception as ex:  # a crashing client costs its reply, not the run
        log.warning("client %d (node %d) failed: %s: %s", node - NODE_ID_OFFSET, node, type(ex).__name__, ex)
        reply = _error_reply(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex).__name__}: {ex}")
    reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return reply


def _worker_main(conn, app_blob: bytes, num_nodes: int, run_id: int, run_config: dict, db_path, identity) -> None:
    import cloudpickle
    import torch

    torch.set_num_threads(1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = identity
    client_app = cloudpickle.loads(app_blob)
    states = NodeStates(num_nodes, run_id, run_config, Path(db_path) if db_path else None)
    while True:
        msgs = conn.recv()
        if msgs is None:
            break
        replies = [handle(client_app, states, m) for m in msgs]
        states.commit()
        conn.send(replies)
    conn.close()


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1, run_config: dict | None = None,
                 workers: int = 1, state_dir: str | Path | None = None):
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.node_ids = [NODE_ID_OFFSET + pid for pid in range(num_nodes)]
        self.workers = max(1, int(workers))
        state_dir = Path(state_dir) if state_dir else None
        self.conns, self.procs = [], []
        self._pending: list[Message] = []
        if self.workers == 1:
            self.states = NodeStates(num_nodes, run_id, run_config or {},
                                     state_dir / "client_state.sqlite" if state_dir else None)
            return
        import cloudpickle

        blob = cloudpickle.dumps(client_app)
        ctx = mp.get_context("spawn")
        for w in range(self.workers):
            parent, child = ctx.Pipe()
            db = str(state_dir / f"client_state.w{w}.sqlite") if state_dir else None
            p = ctx.Process(target=_worker_main, daemon=True,
                            args=(child, blob, num_nodes, run_id, dict(run_config or {}), db,
                                  (1, run_id, SUPERLINK_NODE_ID)))
            p.start()
            self.conns.append(parent)
            self.procs.append(p)

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return list(self.node_ids)

    def push_messages(self, messages):
        self._pending.extend(self.send_and_receive(messages))
        return [r.metadata.reply_to_message_id for r in self._pending]

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        out = [r for r in self._pending if r.metadata.reply_to_message_id in wanted]
        self._pending = [r for r in self._pending if r.metadata.reply_to_message_id not in wanted]
        return out

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        if self.workers == 1:
            replies = [handle(self.client_app, self.states, m) for m in messages]
            self.states.commit()
            return replies
        batches = [[] for _ in range(self.workers)]
        for m in messages:
            batches[(m.metadata.dst_node_id - NODE_ID_OFFSET) % self.workers].append(m)
        for conn, batch in zip(self.conns, batches):
            conn.send(batch)
        replies = []
        for w, conn in enumerate(self.conns):
            try:
                replies.extend(conn.recv())
            except EOFError:  # the worker died: its clients' replies are lost, the round goes on
                log.warning("worker %d died; %d clients lost this round", w, len(batches[w]))
                replies.extend(_error_reply(m, ErrorCode.UNKNOWN, f"worker {w} died") for m in batches[w])
        return replies

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send(None)
            except (BrokenPipeError, OSError):
                pass
        for p in self.procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        self.conns, self.procs = [], []


def run_inprocess(server_app, client_app, num_nodes: int, run_config: dict | None = None, workers: int = 1,
                  state_dir=None) -> None:
    """Run the ServerApp's main function on an in-process grid."""
    grid = InProcessGrid(client_app, num_nodes, run_config=run_config, workers=workers, state_dir=state_dir)
    # Messages take their run and source from the process's task identity, as
    # under Flower's own simulation.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))
    try:
        server_app(grid, context)
    finally:
        grid.close()
