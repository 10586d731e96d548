"""The client-side SecAgg+ guard (secagg_guard.py): a malicious server's crafted requests are
refused, the honest protocol's are not. The requests are built as Flower's SecAggPlusWorkflow
builds them, and the clients run Flower's own secaggplus_mod behind the guard."""

from __future__ import annotations

import copy

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod import secaggplus_mod
from flwr.client.mod.utils import make_ffn
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.compat.common import recorddict_compat as compat

from fedmtl.errors import ConfigError
from fedmtl.federation.client_privacy import client_mods
from fedmtl.federation.secagg_guard import SecAggGuard
from fedmtl.config import compose

NODES = (11, 12, 13)


def request(nid: int, configs: dict) -> Message:
    return Message(RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(configs)}), dst_node_id=nid,
                   message_type=MessageType.TRAIN, group_id="1")


def setup_configs(num_shares=3, threshold=2, samples=3) -> dict:
    return {Key.STAGE: Stage.SETUP, Key.SAMPLE_NUMBER: samples, Key.SHARE_NUMBER: num_shares,
            Key.THRESHOLD: threshold, Key.CLIPPING_RANGE: 8.0, Key.TARGET_RANGE: 2**22, Key.MOD_RANGE: 2**32,
            Key.MAX_WEIGHT: 100.0}


def fit(msg: Message, ctx: Context) -> Message:
    """The training step behind secaggplus_mod: a FitRes of three values, weight 10."""
    res = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([np.array([0.5, -0.25, 1.0])]), 10, {})
    return Message(compat.fitres_to_recorddict(res, True), reply_to=msg)


def step(contexts: dict, nid: int, configs: dict, guarded: bool = True) -> Message:
    mods = [SecAggGuard(), secaggplus_mod] if guarded else [secaggplus_mod]
    return make_ffn(fit, mods)(request(nid, configs), contexts[nid])


def through_collect(contexts: dict) -> None:
    """The honest protocol's setup, share-keys and collect stages, every node a neighbour of every other."""
    keys = {}
    for nid in NODES:
        reply = step(contexts, nid, setup_configs())
        assert not reply.has_error()
        cfg = reply.content[RECORD_KEY_CONFIGS]
        keys[str(nid)] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]
    forward: dict[int, list] = {nid: [] for nid in NODES}
    for nid in NODES:
        reply = step(contexts, nid, {**keys, Key.STAGE: Stage.SHARE_KEYS})
        assert not reply.has_error()
        cfg = reply.content[RECORD_KEY_CONFIGS]
        for dst, ct in zip(cfg[Key.DESTINATION_LIST], cfg[Key.CIPHERTEXT_LIST]):
            forward[dst].append((nid, ct))
    for nid in NODES:
        reply = step(contexts, nid, {Key.STAGE: Stage.COLLECT_MASKED_VECTORS,
                                     Key.CIPHERTEXT_LIST: [ct for _, ct in forward[nid]],
                                     Key.SOURCE_LIST: [src for src, _ in forward[nid]]})
        assert not reply.has_error() and Key.MASKED_PARAMETERS in reply.content[RECORD_KEY_CONFIGS]


@pytest.fixture
def collected():
    contexts = {nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
                for nid in NODES}
    through_collect(contexts)
    return contexts


def unmask(active, dead) -> dict:
    return {Key.STAGE: Stage.UNMASK, Key.ACTIVE_NODE_ID_LIST: list(active), Key.DEAD_NODE_ID_LIST: list(dead)}


def refusal(reply: Message) -> str:
    assert reply.has_error()
    assert reply.error.reason.startswith("fedmtl refused:")
    return reply.error.reason


def test_a_node_named_both_active_and_dropped_is_refused(collected):
    crafted = unmask(NODES, [12])  # node 12 in both lists: the server would get both of its secrets' shares
    bare = step(copy.deepcopy(collected), 11, crafted, guarded=False)
    owners = bare.content[RECORD_KEY_CONFIGS][Key.NODE_ID_LIST]
    assert owners.count(12) == 2  # Flower 1.41 alone hands over node 12's mask-seed share and key share
    assert "both active and dropped" in refusal(step(collected, 11, crafted))


def test_the_honest_unmask_request_is_answered(collected):
    reply = step(collected, 11, unmask(NODES, []))
    assert not reply.has_error()
    assert sorted(reply.content[RECORD_KEY_CONFIGS][Key.NODE_ID_LIST]) == list(NODES)


@pytest.mark.parametrize("active, dead, why", [
    ([12, 13], [11], "named dropped while it answers"),
    ([11, 12, 13, 99], [], "not one of this client's neighbours"),
    ([11, 12, 12], [], "named twice"),
])
def test_other_crafted_unmask_requests_are_refused(collected, active, dead, why):
    assert why in refusal(step(collected, 11, unmask(active, dead)))


@pytest.mark.parametrize("shares, threshold, guard, why", [
    (5, 2, SecAggGuard(), "not above half of its 5 share holders"),
    (4, 2, SecAggGuard(), "not above half of its 4 share holders"),
    (5, 3, SecAggGuard(min_threshold=4), "below this client's floor min_threshold=4"),
    (7, 3, SecAggGuard(), "not above half"),
])
def test_a_setup_below_the_floor_is_refused(shares, threshold, guard, why):
    ctx = Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={})
    reply = make_ffn(fit, [guard, secaggplus_mod])(request(11, setup_configs(shares, threshold, samples=9)), ctx)
    assert why in refusal(reply)


@pytest.mark.parametrize("shares, threshold", [(5, 3), (3, 2), (9, 5)])
def test_a_setup_at_or_above_the_floor_is_answered(shares, threshold):
    ctx = Context(run_id=1, node_id=11, node_config={}, state=RecordDict(), run_config={})
    reply = make_ffn(fit, [SecAggGuard(), secaggplus_mod])(request(11, setup_configs(shares, threshold, 9)), ctx)
    assert not reply.has_error() and Key.PUBLIC_KEY_1 in reply.content[RECORD_KEY_CONFIGS]


def test_a_neighbour_set_without_the_client_is_refused():
    contexts = {nid: Context(run_id=1, node_id=nid, node_config={}, state=RecordDict(), run_config={})
                for nid in NODES}
    keys = {}
    for nid in NODES:
        cfg = step(contexts, nid, setup_configs()).content[RECORD_KEY_CONFIGS]
        keys[str(nid)] = [cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]]
    others = {k: v for k, v in keys.items() if k != "11"}
    assert "leaves this client (11) out" in refusal(step(contexts, 11, {**others, Key.STAGE: Stage.SHARE_KEYS}))


def test_the_guard_sits_before_secaggplus_mod_in_both_secagg_chains():
    for mode in ("secagg", "secagg_dp"):
        chain = list(client_mods(compose([f"privacy={mode}", "num_clients=6"])))
        guards = [i for i, m in enumerate(chain) if isinstance(m, SecAggGuard)]
        assert guards and guards[0] < chain.index(secaggplus_mod)


def test_a_floor_below_two_is_a_config_error():
    with pytest.raises(ConfigError, match="min_threshold"):
        SecAggGuard(min_threshold=1)
