"""A Flower `Grid` that runs the ClientApp in this process.

The ServerApp and the strategy talk to it exactly as to Flower's own grids
(`get_node_ids`, `send_and_receive`); each message is handed to the ClientApp
with that node's persisted `Context`, as a SuperNode would, and a ClientApp
exception becomes an error reply, as in Flower's simulation engine. No Ray, no
serialisation, no polling: the cost of a round is the clients' own work.
"""

from __future__ import annotations

import logging
import uuid

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.serverapp import Grid
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity

log = logging.getLogger("fedmtl")


class InProcessGrid(Grid):
    def __init__(self, client_app: ClientApp, num_nodes: int, run_id: int = 1, run_config: dict | None = None):
        self.client_app = client_app
        self._run = Run.create_empty(run_id)
        # Node ids are 1000 + partition id, so runs are reproducible and readable.
        self.node_ids = [1000 + pid for pid in range(num_nodes)]
        self.contexts = {
            nid: Context(run_id=run_id, node_id=nid,
                         node_config={"partition-id": pid, "num-partitions": num_nodes},
                         state=RecordDict(), run_config=dict(run_config or {}))
            for pid, nid in enumerate(self.node_ids)
        }

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self):
        return list(self.node_ids)

    def _deliver(self, msg: Message) -> Message:
        msg.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        node = msg.metadata.dst_node_id
        if node not in self.contexts:
            return Message(Error(code=ErrorCode.UNKNOWN, reason=f"unknown node {node}"), reply_to=msg)
        try:
            reply = self.client_app(msg, self.contexts[node])
        except Exception as ex:  # a crashing client costs its reply, not the run
            pid = self.contexts[node].node_config["partition-id"]
            log.warning("client %s (node %d) failed: %s: %s", pid, node, type(ex).__name__, ex)
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                  reason=f"{type(ex).__name__}: {ex}"), reply_to=msg)
        reply.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        return reply

    def push_messages(self, messages):
        self._pending = [self._deliver(m) for m in messages]
        return [r.metadata.reply_to_message_id for r in self._pending]

    def pull_messages(self, message_ids):
        wanted = set(message_ids)
        out = [r for r in self._pending if r.metadata.reply_to_message_id in wanted]
        self._pending = [r for r in self._pending if r.metadata.reply_to_message_id not in wanted]
        return out

    def send_and_receive(self, messages, *, timeout=None):
        return [self._deliver(m) for m in messages]


def run_inprocess(server_app, client_app, num_nodes: int, run_config: dict | None = None) -> None:
    """Run the ServerApp's main function on an in-process grid."""
    grid = InProcessGrid(client_app, num_nodes, run_config=run_config)
    # Messages take their run and source from the process's task identity, as
    # under Flower's own simulation.
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, grid.run.run_id, SUPERLINK_NODE_ID
    context = Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config or {}))
    server_app(grid, context)
