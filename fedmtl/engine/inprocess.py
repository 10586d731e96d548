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

import logging
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import pickle
import uuid
from pathlib import Path

from flwr.app import Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

from .nodes import NODE_ID_OFFSET, NodeStates, error_reply, handle_all, no_cyclic_gc
from .pipe import dumps as _dumps, matrices as _matrices
from .worker import relog, worker_main

log = logging.getLogger("fedmtl")


class InProcessGrid(Grid):
    # click_mix's rows of B on evaluation messages stay rows of the matrix here (arrays.RowsOf: a
    # client takes its own when it reads them; a worker is sent each matrix once): the rows of a
    # whole evaluation cost no memory, so it goes in one send (federation/click_mix.send_evaluate)
    eval_rows_bytes = float("inf")

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
            p = ctx.Process(target=worker_main, daemon=True,
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

    reads_parts = True
    on_part = None  # a callable(replies), while set: each part of the workers' answers as it is read (the
                    # server checks a training round's replies there while the rest still train)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        if self.on_part is not None and self.workers > 1:  # (one process: one part, the answer)
            return self.answer(messages, timeout, on_part=self.on_part)
        return self.answer(messages, timeout)

    def answer(self, messages: list[Message], timeout=None, *, on_part=None) -> list[Message]:
        """The replies to messages that have their ids: this process's ClientApp, or the workers'
        (in the order of the messages they answer, whichever worker answered)."""
        if self.workers == 1:
            return handle_all(self.client_app, self.states, messages, timeout)
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
        # A worker's answer comes in parts (a cohort worker sends its training replies about an eighth
        # of its clients at a time as they are made; the last part says so): read whichever worker has one ready, so that
        # replies are read while the clients behind them still train.
        replies, answered = [], [set() for _ in self.conns]
        waiting = {self.conns[w]: w for w in range(self.workers) if sent[w]}
        gone = [w for w in range(self.workers) if not sent[w]]
        with no_cyclic_gc():  # some 10^4 objects a round (see there), kept until the round ends: no collection
            while waiting:     # walks them after each part (one part at a time: 0.18 s a round at ML-1M shape)
                for conn in mp_connection.wait(list(waiting)):
                    w = waiting[conn]
                    try:
                        part, records, last = pickle.loads(conn.recv_bytes())
                    except (EOFError, OSError):  # the worker died: its clients' replies are lost, the round goes on
                        del waiting[conn]
                        gone.append(w)
                        continue
                    replies.extend(part)
                    answered[w].update(r.metadata.reply_to_message_id for r in part)
                    relog(records)
                    if on_part is not None and not last:  # (the last part: as the others, checked after)
                        on_part(part)
                    if last:
                        del waiting[conn]
        for w in sorted(gone):
            lost = [m for m in batches[w] if m.metadata.message_id not in answered[w]]
            if lost:
                log.warning("worker %d (pid %s) is gone; its %d clients failed this round", w, self.procs[w].pid,
                            len(lost))
            replies.extend(error_reply(m, ErrorCode.UNKNOWN, f"worker {w} died") for m in lost)
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
