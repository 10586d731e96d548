"""A worker process of an in-process grid (`backend.workers=N`): it holds its nodes' states,
answers the grid's jobs from its pipe (a round's messages, a matrix sent once, save and load
of the states), and sends its fedmtl log records back with each answer for the grid to log."""

from __future__ import annotations

import gc
import logging
from pathlib import Path

from flwr.supercore.task_identity import TaskIdentity

from .nodes import NodeStates, handle_all, no_cyclic_gc
from .pipe import dumps as _dumps, loads as _loads


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


def relog(records) -> None:
    """Log a worker's records in this process, as if logged here (the logger's filters and handlers)."""
    for record in records:
        logging.getLogger(record.name).handle(record)


def worker_main(conn, app_blob: bytes, num_nodes: int, run_id: int, run_config: dict, db_path, identity,
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
    idle = None  # what a batch does once its replies are sent (a cohort worker: prepare the next round)
    if worker_answer is None:
        def answer(msgs, timeout):
            return handle_all(client_app, states, msgs, timeout)
    else:  # e.g. backend=cohort backend.workers=N: this worker's nodes of a round as one batch
        answer = worker_answer(client_app, num_nodes, run_id, run_config, states)
        idle = getattr(answer, "idle", None)
    parts = worker_answer is not None and getattr(answer, "sends_parts", False)

    def send(replies, last: bool = False) -> None:  # a part of a round's answer, with the log records so far
        with no_cyclic_gc():
            conn.send_bytes(_dumps((replies, records[:], last)))
        records.clear()

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
            # the cohort's batch pauses the collector itself, and sends its training replies in parts as they
            # are made (the last part is the answer); the ClientApp's path answers at once
            send(answer(arg, timeout, send) if parts else answer(arg, timeout), last=True)
            if idle is not None:  # e.g. the cohort's batch prepares the next round while the server aggregates
                idle()
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
