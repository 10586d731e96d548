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
- `send_and_receive(timeout=T)` drops the reply of a client whose own handling
  took longer than T seconds, as a real grid would after the round's deadline
  (clients of a real round run side by side, so the deadline is per client).
- `save_client_states` / `load_client_states` copy every node's state to and
  from a checkpoint folder (fedmtl.federation.resume).
"""

from __future__ import annotations

import gc
import logging
import multiprocessing as mp
import pickle
import sqlite3
import time
import uuid
from contextlib import contextmanager
from pathlib import Path

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from .pipe import dumps as _dumps, loads as _loads, matrices as _matrices

log = logging.getLogger("fedmtl")
NODE_ID_OFFSET = 1000  # node id = 1000 + partition id: reproducible and readable


@contextmanager
def no_cyclic_gc():
    """Python's cyclic collector off while a round's messages are answered or read: a 943-client
    round makes some 10^5 small objects (reply records, array wrappers, states) that live at least
    until the replies are read, and each collection they set off would also walk every client's
    stored state. It collects once the block is over; reference counting frees as usual meanwhile.
    The 45-round ML-100k recipe spent 3.5 s in collections, 1.4 s with this around the cohort
    engine's batch (with 2 threads: 60.7 -> 59.0 s, two runs each)."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


class NodeStates:
    """Each node's `Context`, in memory or in an SQLite file (one row per node)."""

    def __init__(self, num_nodes: int, run_id: int, run_config: dict, path: Path | None = None):
        self.num_nodes, self.run_id, self.run_config = num_nodes, run_id, dict(run_config)
        self.memory: dict[int, Context] = {}
        self.db = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # a fresh start: states a former run left in this folder are not this run's (a resumed
            # run loads its states from the checkpoint, load_client_states)
            for stale in (path, path.with_name(path.name + "-journal")):
                stale.unlink(missing_ok=True)
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

    def save(self, path: Path) -> None:
        """Every node's state into the file `path` (a consistent copy)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        if self.db is None:
            with open(path, "wb") as f:
                pickle.dump({n: ctx.state for n, ctx in self.memory.items()}, f)
            return
        self.db.commit()
        dst = sqlite3.connect(str(path))
        self.db.backup(dst)
        dst.close()

    def load(self, path: Path) -> None:
        """Replace every node's state with those saved in `path` (nodes absent there start fresh)."""
        if self.db is None:
            with open(path, "rb") as f:
                saved = pickle.load(f)
            self.memory = {}
            for node, state in saved.items():
                self.memory[node] = self._new(node)
                self.memory[node].state = state
            return
        src = sqlite3.connect(str(path))
        src.backup(self.db)
        src.close()


def _error_reply(msg: Message, code: int, reason: str) -> Message:
    return Message(Error(code=code, reason=reason), reply_to=msg)


def handle(client_app: ClientApp, states: NodeStates, msg: Message, timeout: float | None = None) -> Message | None:
    """Run one message through the ClientApp with its node's Context, as a SuperNode does.
    None when the client took longer than `timeout` seconds: its reply came too late."""
    node = msg.metadata.dst_node_id
    if not NODE_ID_OFFSET <= node < NODE_ID_OFFSET + states.num_nodes:
        return _error_reply(msg, ErrorCode.UNKNOWN, f"unknown node {node}")
    ctx = states.get(node)
    t0 = time.monotonic()
    try:
        reply = client_app(msg, ctx)
        states.put(node, ctx)
    except Exception as ex:  # a crashing client costs its reply, not the run
        injected = type(ex).__name__ == "InjectedDrop"  # faults.drop_rate: expected, so not a warning
        log.log(logging.INFO if injected else logging.WARNING, "client %d (node %d) failed: %s: %s",
                node - NODE_ID_OFFSET, node, type(ex).__name__, ex)
        reply = _error_reply(msg, ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(ex).__name__}: {ex}")
    if timeout is not None and time.monotonic() - t0 > timeout:
        log.info("client %d (node %d) replied after the %gs timeout; reply dropped", node - NODE_ID_OFFSET,
                 node, timeout)
        return None
    reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
    return reply


def _handle_all(client_app, states: NodeStates, msgs, timeout) -> list[Message]:
    replies = [handle(client_app, states, m, timeout) for m in msgs]
    states.commit()
    return [r for r in replies if r is not None]


class _Records(list):
    """Where a worker's fedmtl log records wait (a QueueHandler's queue) to go back with its answer."""

    put_nowait = list.append


def _worker_logging(level: int) -> _Records:
    """A worker process's fedmtl log records (a client's crash, a batch that fell back to the
    ClientApp, ...) kept at the parent's level, formatted, to be sent back with each answer and
    logged by the parent through its own handlers (console and run log), in the round they belong to."""
    import logging.handlers

    records = _Records()
    lg = logging.getLogger("fedmtl")
    lg.handlers = [logging.handlers.QueueHandler(records)]
    lg.setLevel(level)
    lg.propagate = False
    return records


def _relog(records) -> None:
    """Log a worker's records in this process, as if logged here (the logger's filters and handlers)."""
    for record in records:
        logging.getLogger(record.name).handle(record)


def _worker_main(conn, app_blob: bytes, num_nodes: int, run_id: int, run_config: dict, db_path, identity,
                 worker_answer=None, log_level: int = logging.INFO) -> None:
    import signal

    import cloudpickle
    import torch

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle; it closes the workers
    records = _worker_logging(log_level)
    torch.set_num_threads(1)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = identity
    client_app = cloudpickle.loads(app_blob)
    states = NodeStates(num_nodes, run_id, run_config, Path(db_path) if db_path else None)
    if worker_answer is None:
        def answer(msgs, timeout):
            return _handle_all(client_app, states, msgs, timeout)
    else:  # e.g. backend=cohort backend.workers=N: this worker's nodes of a round as one batch
        answer = worker_answer(client_app, num_nodes, run_id, run_config, states)
    matrices: dict = {}  # key -> a matrix the grid sent once (rows of EASE's B: one per run and lambda)
    frozen = False
    while True:
        try:
            with no_cyclic_gc():
                job = _loads(conn.recv_bytes(), matrices)
        except EOFError:  # the parent went away: stop quietly
            break
        if job is None:
            break
        kind, arg, timeout = job
        if kind == "matrices":
            matrices.update(arg)
        elif kind == "run":
            with no_cyclic_gc():
                replies = answer(arg, timeout)
                conn.send_bytes(_dumps((replies, records[:])))
                records.clear()
            if not frozen:  # what the first round built (the clients' data, the run's setup) lives as long as
                gc.freeze()  # the worker: the cyclic collector stops walking it (gen-2 collections cost ~1 s a run)
                frozen = True
        elif kind == "save":
            states.save(Path(arg))
            conn.send_bytes(_dumps(True))
        else:
            states.load(Path(arg))
            conn.send_bytes(_dumps(True))
    conn.close()


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1, run_config: dict | None = None,
                 workers: int = 1, state_dir: str | Path | None = None, worker_answer=None):
        """worker_answer (workers > 1): a picklable callable(client_app, num_nodes, run_id,
        run_config, states) that gives each worker its answer(messages, timeout) (e.g. the cohort
        engine's batch); None: the ClientApp, message by message."""
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        self.node_ids = [NODE_ID_OFFSET + pid for pid in range(num_nodes)]
        self.workers = max(1, int(workers))
        state_dir = Path(state_dir) if state_dir else None
        self.conns, self.procs = [], []
        self._pending: list[Message] = []
        self._keys: dict[int, tuple] = {}  # id(matrix) -> (weak reference, key): matrices sent to workers
        self._sent: list[set] = [set() for _ in range(self.workers)]  # the keys each worker holds
        self._next_key = 0
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
                                  (1, run_id, SUPERLINK_NODE_ID), worker_answer,
                                  logging.getLogger("fedmtl").getEffectiveLevel()))
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
        return self.answer(messages, timeout)

    def answer(self, messages: list[Message], timeout=None) -> list[Message]:
        """The replies to messages that have their ids: this process's ClientApp, or the workers'
        (in the order of the messages they answer, whichever worker answered)."""
        if self.workers == 1:
            return _handle_all(self.client_app, self.states, messages, timeout)
        batches = [[] for _ in range(self.workers)]
        for m in messages:
            batches[(m.metadata.dst_node_id - NODE_ID_OFFSET) % self.workers].append(m)
        sent = []
        for w, (conn, batch) in enumerate(zip(self.conns, batches)):
            known = {id(mat): (mat, self._key(mat)) for mat in _matrices(batch)}
            new = {key: mat for mat, key in known.values() if key not in self._sent[w]}
            try:
                if new:  # each matrix once per worker (a round's evaluation goes in several sends)
                    conn.send_bytes(_dumps(("matrices", new, None)))
                    self._sent[w].update(new)
                conn.send_bytes(_dumps(("run", batch, timeout), known))
                sent.append(True)
            except OSError:  # BrokenPipeError: the worker died before this round
                sent.append(False)
        replies = []
        for w, conn in enumerate(self.conns):
            try:
                if not sent[w]:
                    raise EOFError
                with no_cyclic_gc():  # some 10^4 objects a round (see there)
                    answered, records = pickle.loads(conn.recv_bytes())
                replies.extend(answered)
                _relog(records)
            except (EOFError, OSError):  # the worker died: its clients' replies are lost, the round goes on
                if batches[w]:
                    log.warning("worker %d (pid %s) is gone; its %d clients failed this round", w,
                                self.procs[w].pid, len(batches[w]))
                replies.extend(_error_reply(m, ErrorCode.UNKNOWN, f"worker {w} died") for m in batches[w])
        order = {m.metadata.message_id: k for k, m in enumerate(messages)}
        return sorted(replies, key=lambda r: order.get(r.metadata.reply_to_message_id, len(order)))

    def _key(self, mat) -> int:
        """The key a matrix goes by on the pipe (a new one if the object is new)."""
        import weakref

        hit = self._keys.get(id(mat))
        if hit is None or hit[0]() is not mat:
            self._keys = {k: v for k, v in self._keys.items() if v[0]() is not None}  # forget freed matrices
            hit = (weakref.ref(mat), self._next_key)  # never a key a worker may hold for another matrix
            self._next_key += 1
            self._keys[id(mat)] = hit
        return hit[1]

    def _state_files(self, folder: Path) -> list[Path]:
        return [Path(folder) / f"client_state.w{w}" for w in range(self.workers)]

    def save_client_states(self, folder) -> None:
        """Every node's Context.state into `folder` (one file per worker)."""
        files = self._state_files(folder)
        if self.workers == 1:
            self.states.save(files[0])
            return
        gone = []  # the workers whose pipe broke: each has lost its clients' states
        for w, (conn, path) in enumerate(zip(self.conns, files)):
            try:
                conn.send_bytes(_dumps(("save", str(path), None)))
            except OSError:
                gone.append(w)
        for w, conn in enumerate(self.conns):
            if w not in gone:
                try:
                    conn.recv_bytes()
                except (EOFError, OSError):
                    gone.append(w)
        if gone:
            from ..errors import FedMTLError
            which = ", ".join(f"{w} (pid {self.procs[w].pid})" for w in sorted(gone))
            raise FedMTLError(f"backend.workers: worker {which} is gone, and with it its clients' states; the "
                              "run stops here (resume=true goes on from the last checkpoint)")

    def load_client_states(self, folder) -> None:
        files = self._state_files(folder)
        missing = [p for p in files if not p.is_file()]
        if missing:
            from ..errors import FedMTLError
            raise FedMTLError(f"{missing[0]}: client states missing from the checkpoint "
                              f"(was it written with another backend.workers?)")
        if self.workers == 1:
            self.states.load(files[0])
            return
        for conn, path in zip(self.conns, files):
            conn.send_bytes(_dumps(("load", str(path), None)))
        for conn in self.conns:
            conn.recv_bytes()

    def close(self) -> None:
        for conn in self.conns:
            try:
                conn.send_bytes(_dumps(None))
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
    run_on_grid(server_app, InProcessGrid(client_app, num_nodes, run_config=run_config, workers=workers,
                                          state_dir=state_dir), run_config)


def run_on_grid(server_app, grid, run_config: dict | None = None) -> None:
    """Run the ServerApp's main function on `grid` (this module's or the cohort engine's), then close it."""
    # Messages take their run and source from the process's task identity, as
    # under Flower's own simulation.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))
    try:
        server_app(grid, context)
    finally:
        grid.close()
