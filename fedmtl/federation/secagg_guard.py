"""A client-side guard for SecAgg+: the checks Flower 1.41's `secaggplus_mod` leaves to the server.

In SecAgg+ each client u Shamir-shares two secrets among its share holders (its
neighbours and itself, `num_shares` of them, any `reconstruction_threshold` t of them
rebuild a secret): b_u, the seed of its self mask, and sk_u, the key behind its pairwise
masks. At unmasking the server names which clients are active (a holder sends its share of
b_u) and which dropped (a holder sends its share of sk_u). Holding both secrets of one
client, the server strips every mask off that client's vector and reads its update.

Flower's client answers any unmask request as it comes. So a server that

- names a node as both active and dropped in one request gets both shares of it from
  that holder (Flower 1.41 does not check that the lists are disjoint), or
- names node u active to some of u's holders and dropped to others gets t shares of
  b_u from one group and t of sk_u from another, which is possible exactly when two
  disjoint groups of t holders fit in u's num_shares holders: 2t <= num_shares. Flower
  has no consistency round (Bonawitz et al., CCS 2017, take one, with signed messages,
  in their active-adversary analysis; SecAgg+ of Bell et al., CCS 2020, inherits it), so
  only t > num_shares / 2 stops this split; colluding clients among the holders need a
  larger t still.

`SecAggGuard` is a mod placed before `secaggplus_mod` that refuses, with an error reply
whose reason starts with "fedmtl refused:":

- SETUP: a threshold below this client's floor `min_threshold` (default 2), or not
  above half of the share holders (2t <= num_shares), or more shares than clients;
- SHARE_KEYS: a neighbour set that leaves this client out, is larger than num_shares,
  or smaller than the threshold;
- UNMASK: a node in both the active and the dropped list, this client itself listed as
  dropped, or a node that is not one of its neighbours.

A server that refuses to follow these rules gets no shares from this client. What the
guard cannot see: the lists the server sends to other clients (it sees only its own
request), and whether a neighbour named dropped really dropped.
"""

from __future__ import annotations

import logging

from flwr.app import Context, Error, Message
from flwr.app.message_type import MessageType
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key, Stage
from flwr.common.constant import ErrorCode

from ..errors import ConfigError
from .failures import REFUSED
from ..privacy_floor import CURRENT_CLIENT

log = logging.getLogger("fedmtl")


def setup_problem(configs, min_threshold: int) -> str | None:
    """Why a SETUP request's protocol parameters are below the floor, or None."""
    t, n, m = configs.get(Key.THRESHOLD), configs.get(Key.SHARE_NUMBER), configs.get(Key.SAMPLE_NUMBER)
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (t, n, m)):
        return f"SecAgg+ setup: threshold, num_shares and sample size must be integers (got {t!r}, {n!r}, {m!r})"
    if t < min_threshold:
        return f"SecAgg+ setup: reconstruction threshold {t} is below this client's floor min_threshold={min_threshold}"
    if 2 * t <= n:
        return (f"SecAgg+ setup: reconstruction threshold {t} is not above half of its {n} share holders: a server "
                "could rebuild both secrets of a client from two disjoint groups of holders")
    if n > m:
        return f"SecAgg+ setup: {n} shares for {m} sampled clients"
    return None


def share_keys_problem(configs, state: SecAggPlusState) -> str | None:
    """Why a SHARE_KEYS request's neighbour set is outside the floor, or None."""
    try:
        neighbours = {int(k) for k in configs if k != Key.STAGE}
    except ValueError:
        return "SecAgg+ share keys: a neighbour id that is not an integer"
    if state.nid not in neighbours:
        return f"SecAgg+ share keys: the neighbour set leaves this client ({state.nid}) out"
    if len(neighbours) > state.share_num:
        return f"SecAgg+ share keys: {len(neighbours)} neighbours for num_shares={state.share_num}"
    if len(neighbours) < state.threshold:
        return f"SecAgg+ share keys: {len(neighbours)} neighbours, fewer than the threshold {state.threshold}"
    return None


def unmask_problem(configs, state: SecAggPlusState) -> str | None:
    """Why an UNMASK request would give away a client's secrets, or None."""
    active, dead = list(configs.get(Key.ACTIVE_NODE_ID_LIST, [])), list(configs.get(Key.DEAD_NODE_ID_LIST, []))
    both = sorted(set(active) & set(dead))
    if both:
        return (f"SecAgg+ unmask: node {both[0]} is named both active and dropped (its mask seed and its key "
                "share together would unmask its update)")
    if state.nid in dead:
        return f"SecAgg+ unmask: this client ({state.nid}) is named dropped while it answers"
    if len(set(active)) != len(active) or len(set(dead)) != len(dead):
        return "SecAgg+ unmask: a node is named twice"
    strangers = sorted(set(active + dead) - set(state.public_keys_dict))
    if strangers:
        return f"SecAgg+ unmask: node {strangers[0]} is not one of this client's neighbours"
    return None


class SecAggGuard:
    """A Flower mod, placed before `secaggplus_mod`: refuses SecAgg+ requests that would let a
    malicious server unmask this client (module docstring). `min_threshold` is this client's
    floor for the reconstruction threshold."""

    def __init__(self, min_threshold: int | None = None):
        if min_threshold is not None and (isinstance(min_threshold, bool) or not isinstance(min_threshold, int)
                                          or min_threshold < 2):
            raise ConfigError(f"SecAgg+ guard min_threshold={min_threshold!r}: expected an integer >= 2")
        self.given = min_threshold

    @property
    def min_threshold(self) -> int:
        """The one given, else this client's floor (floor.CURRENT_CLIENT, set for the message
        by the train handler's privacy mod), else 2."""
        if self.given is not None:
            return self.given
        _, floor = CURRENT_CLIENT.get()
        return floor.secagg_min_threshold if floor is not None else 2

    def problem(self, msg: Message, ctx: Context) -> str | None:
        configs = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        if configs is None:
            return None  # not a SecAgg+ message: the floor (privacy_floor.py) decides
        stage = configs.get(Key.STAGE)
        if stage == Stage.SETUP:
            return setup_problem(configs, self.min_threshold)
        record = ctx.state.config_records.get(RECORD_KEY_STATE)
        state = SecAggPlusState(**record) if record is not None else SecAggPlusState()
        if stage == Stage.SHARE_KEYS:
            return share_keys_problem(configs, state)
        if stage == Stage.UNMASK:
            return unmask_problem(configs, state)
        return None

    def __call__(self, msg: Message, ctx: Context, call_next) -> Message:
        if msg.metadata.message_type != MessageType.TRAIN or not msg.has_content():
            return call_next(msg, ctx)
        problem = self.problem(msg, ctx)
        if problem is None:
            return call_next(msg, ctx)
        log.warning("node %d refused a SecAgg+ request: %s", msg.metadata.dst_node_id, problem)
        return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{REFUSED} {problem}"), reply_to=msg)
