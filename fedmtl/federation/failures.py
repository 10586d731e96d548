"""Nodes that crash, vanish or never connect: bounded waits and the configured policy.

Flower's strategies wait for `min_available_nodes` with no time limit, so a run
whose SuperNode died would wait forever for it to come back. The round loop
calls `wait_for_nodes` first: it waits at most `round_timeout` seconds for enough
connected nodes, then stops the run with one line that says so. After each
exchange `check_replies` applies `on_client_failure`:

- `continue` (default): the round aggregates the replies that did arrive (a node
  that failed, or did not answer within `round_timeout`, is counted in
  metrics.jsonl's `failed`), and later rounds sample from the nodes still connected;
- `stop`: the first node that fails or does not answer stops the run with one line
  naming the round, the stage and the reason. Finished rounds stay in metrics.jsonl.

Every round counts its failed clients by kind (`round_counts`: dropped by injection,
refused below a privacy floor, error, invalid reply, late). A round whose answers are
fewer than the strategy's minimum (`min_train_clients`, at least 1: `quorum`) is
skipped: the global arrays and the strategy's state stay as they were and
metrics.jsonl records the reason (`skip_reason`).
"""

from __future__ import annotations

import time

from ..config_types import RunConfig
from ..errors import FedMTLError
from .faults import MARK

POLICIES = ("continue", "stop")


class RoundFailure(FedMTLError):
    """A round could not go on: too few nodes, or a node failed under on_client_failure=stop."""


FAILURE_KINDS = ("dropped", "refused", "error", "invalid", "late")
REFUSED = "fedmtl refused:"  # in the reason of a client's refusal (a request below its privacy floor)


def refused(reply) -> bool:
    """Whether an error reply is a client's refusal (its privacy floor), not a crash."""
    reason = (reply.error.reason or "") if reply.has_error() else ""
    return REFUSED in reason and MARK not in reason


def round_counts(sent, replies, invalid: int = 0) -> dict:
    """How many clients were sampled, answered and failed, and why they failed:
    `dropped` (injected), `refused` (below the client's privacy floor), `error` (any other
    exception), `invalid` (a reply that failed replies.py's checks: `invalid` of the replies
    without error), `late` (no reply by the timeout)."""
    replies = list(replies)
    errors = [r for r in replies if r.has_error()]
    dropped = sum(MARK in (r.error.reason or "") for r in errors)
    refusals = sum(refused(r) for r in errors)
    sampled, answered = len(sent), len(replies) - len(errors) - invalid
    return {"sampled": sampled, "answered": answered, "failed": sampled - answered,
            "failed_by": {"dropped": dropped, "refused": refusals, "error": len(errors) - dropped - refusals,
                          "invalid": invalid, "late": sampled - len(replies)}}


def quorum(cfg: RunConfig) -> int:
    """The fewest training answers a round aggregates: the strategy's min_train_nodes, at least 1."""
    return max(1, min(int(cfg["min_train_clients"]), int(cfg["num_clients"])))


def skip_reason(counts: dict, cfg: RunConfig) -> str | None:
    """Why a round with these counts is not aggregated, or None when it is."""
    need = quorum(cfg)
    if counts["answered"] >= need:
        return None
    by = ", ".join(f"{v} {k}" for k, v in counts["failed_by"].items() if v)
    return (f"only {counts['answered']} of {counts['sampled']} clients answered ({by or 'none failed'}); "
            f"fewer than min_train_clients={need}")


class BoundedGrid:
    """The grid as a Flower strategy sees it in one round: once the deadline has passed,
    asking for the node ids with too few connected raises instead of returning, which
    ends Flower's own unbounded wait in `sample_nodes`."""

    def __init__(self, grid, needed: int, deadline: float, timeout: float, rnd: int, stage: str):
        self._grid, self.needed, self.deadline = grid, needed, deadline
        self._what = (rnd, stage, timeout)

    def get_node_ids(self):
        ids = list(self._grid.get_node_ids())
        if len(ids) < self.needed and time.time() >= self.deadline:
            rnd, stage, timeout = self._what
            raise RoundFailure(f"round {rnd} {stage}: {len(ids)} node(s) connected, {self.needed} needed "
                               f"(min_{'train' if stage == 'train' else 'evaluate'}_clients), none more "
                               f"within round_timeout={timeout:g}s; stopping")
        return ids

    def __getattr__(self, name):
        return getattr(self._grid, name)


def wait_for_nodes(grid, needed: int, timeout: float, rnd: int, stage: str, poll: float = 1.0) -> BoundedGrid:
    """Wait until `needed` nodes are connected, at most `timeout` seconds (then raise
    RoundFailure); return the grid for the strategy, bounded by the same deadline."""
    bounded = BoundedGrid(grid, needed, time.time() + timeout, timeout, rnd, stage)
    while len(bounded.get_node_ids()) < needed:
        time.sleep(min(poll, max(bounded.deadline - time.time(), 0.01)))
    return bounded


def needed_nodes(strategy, stage: str) -> int:
    """How many connected nodes the Flower strategy waits for before sampling."""
    while not hasattr(strategy, "min_available_nodes") and hasattr(strategy, "strategy"):
        strategy = strategy.strategy  # Flower's DP wrappers hold the strategy that samples
    floor = strategy.min_train_nodes if stage == "train" else strategy.min_evaluate_nodes
    return max(int(strategy.min_available_nodes), int(floor))


def failure_reasons(msgs, replies) -> list[str]:
    """One short reason per sampled node that gave no usable reply. Replies are paired
    with their messages by message id where the grid set them (a SuperLink's own
    "node unavailable" reply does not come from the node), else by node id."""
    ids = [m.metadata.message_id for m in msgs]
    if all(ids) and len(set(ids)) == len(ids):
        dst = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
        node_of = lambda r: dst.get(r.metadata.reply_to_message_id, r.metadata.src_node_id)  # noqa: E731
        answered = {r.metadata.reply_to_message_id for r in replies}
        missing = [m for m in msgs if m.metadata.message_id not in answered]
    else:
        node_of = lambda r: r.metadata.src_node_id  # noqa: E731
        answered = {r.metadata.src_node_id for r in replies}
        missing = [m for m in msgs if m.metadata.dst_node_id not in answered]
    reasons = [f"node {node_of(r)}: {r.error.reason}".strip() for r in replies if r.has_error()]
    reasons += [f"node {m.metadata.dst_node_id}: no reply" for m in missing]
    return reasons


def check_replies(cfg: RunConfig, rnd: int, stage: str, msgs, replies) -> None:
    """Apply on_client_failure to one exchange (train or evaluate)."""
    reasons = failure_reasons(msgs, replies)
    if reasons and cfg["on_client_failure"] == "stop":
        first = reasons[0].splitlines()[0][:200]
        raise RoundFailure(f"round {rnd} {stage}: {len(reasons)} of {len(msgs)} node(s) failed or gave no reply "
                           f"within round_timeout={cfg['round_timeout']:g}s ({first}); stopping "
                           "(on_client_failure=stop)")


def refusal_reason(replies) -> str | None:
    """The first refusal's reason (`fedmtl refused: ...`, a client's privacy floor), or None."""
    for r in replies:
        if refused(r):
            reason = r.error.reason
            return reason[reason.index(REFUSED):].splitlines()[0][:200]
    return None


def check_refusals(what: str, msgs, replies, because: str) -> None:
    """Stop the run when every client asked refused (below its privacy floor): going on
    would only repeat the refusals. `because`: what the floors do not accept."""
    replies = list(replies)
    if msgs and len(replies) == len(msgs) and all(refused(r) for r in replies):
        raise RoundFailure(f"{what}: all {len(msgs)} clients refused ({refusal_reason(replies)}); {because}")
