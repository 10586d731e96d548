"""The client decides its own privacy: a request below its floor is refused with an
error reply, the server counts it as `refused`, and a run that every client refuses
stops with one line. The run config a deployed client receives is checked like a
command line."""

from __future__ import annotations

import json

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import MessageType
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedmtl.config import compose
from fedmtl.engine.nodes import NodeStates, handle
from fedmtl.errors import ConfigError, FedMTLError, PrivacyRefused
from fedmtl.federation.client_app import make_client_app
from fedmtl.federation.client_state import config_from_context
from fedmtl.privacy_floor import ACCEPTS, Floor, check_gram, check_train, client_floor
from fedmtl.simulate import run

TINY = ["dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=2", "device=cpu"]


@pytest.fixture
def identity():
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID


def rows(out) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# --- whole runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("server, floor, words", [
    (["privacy=none"], ["client_floor.privacy=secagg"], "privacy=none is below this client's floor"),
    (["privacy=central_dp"], ["client_floor.privacy=secagg"], "privacy=central_dp is below"),
    (["privacy=secagg"], ["client_floor.privacy=secagg_dp"], "privacy=secagg is below"),
    (["exchange=sparse"], ["client_floor.sparse=false"], "exchange=sparse"),
    (["privacy=secagg_dp", "privacy.noise_multiplier=0.5"], ["client_floor.min_noise_multiplier=1.0"],
     "noise multiplier 0.5, below this client's floor min_noise_multiplier=1"),
    (["privacy=local_dp", "privacy.epsilon=50"], ["client_floor.min_noise_multiplier=0.5"], "noise multiplier"),
    (["click_mix.weight=0.1"], ["client_floor.gram=false"], "item Gram query"),
    (["privacy=secagg", "privacy.num_shares=5", "privacy.reconstruction_threshold=3"],
     ["client_floor.secagg_min_threshold=4"], "threshold"),
])
def test_a_run_below_every_clients_floor_stops_with_one_line(tmp_path, server, floor, words):
    with pytest.raises(FedMTLError, match="refused") as e:
        run(compose(TINY + server + floor), tmp_path)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "model_shared.pt").exists()  # nothing trained, nothing published


@pytest.mark.parametrize("server, floor", [
    (["privacy=secagg_dp", "privacy.noise_multiplier=1.0"], ["client_floor.privacy=secagg",
                                                            "client_floor.min_noise_multiplier=1.0"]),
    (["privacy=client_clip_dp"], ["client_floor.privacy=central_dp"]),
])
def test_a_run_at_or_above_the_floor_trains(tmp_path, server, floor):
    summary = run(compose(TINY + server + floor), tmp_path)
    assert summary["rounds"] == 2
    assert all(r["answered"] == 6 and r["failed_by"].get("refused", 0) == 0 for r in rows(tmp_path))


# --- one client ----------------------------------------------------------------------------------


def test_the_accept_table_only_ever_demands_more():
    """A floor accepts a mode only if that mode gives the server no more than the floor's own
    mode does: every floor accepts itself and local_dp, none accepts everything."""
    for floor, modes in ACCEPTS.items():
        assert floor in modes and "local_dp" in modes
        assert set(ACCEPTS[floor]) <= set(ACCEPTS["none"])
    assert set(ACCEPTS["secagg_dp"]) < set(ACCEPTS["secagg"]) and "none" not in ACCEPTS["central_dp"]


def _train_msg(cfg, secagg=False) -> Message:
    content = RecordDict({"arrays": ArrayRecord({"w": Array(np.zeros(3, np.float32))}),
                          "config": ConfigRecord({"server-round": 1})})
    if secagg:
        from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS
        content[RECORD_KEY_CONFIGS] = ConfigRecord({"stage": "setup"})
    return Message(content, dst_node_id=1000, message_type=MessageType.TRAIN)


def test_a_plain_training_request_in_a_secagg_run_is_refused():
    """A server that skips SecAgg+ would get the update in the clear: the client refuses."""
    cfg = compose(TINY + ["privacy=secagg"])
    with pytest.raises(PrivacyRefused, match="not a SecAgg\\+ message"):
        check_train(Floor(), cfg, secagg_message=False, noise_multiplier=None)
    check_train(Floor(), cfg, secagg_message=True, noise_multiplier=None)  # the protocol's own messages pass


def _ask(cfg, msg: Message, node_config: dict | None = None) -> tuple[Message, Context]:
    """One message through the ClientApp as a node handles it (an exception: an error reply)."""
    states = NodeStates(6, 1, {})
    ctx = states.get(1000)
    ctx.node_config.update(node_config or {})
    return handle(make_client_app(cfg), states, msg), ctx


def test_the_client_app_replies_with_an_error_naming_the_refusal(identity):
    cfg = compose(TINY + ["client_floor.privacy=local_dp"])
    reply, ctx = _ask(cfg, _train_msg(cfg))
    assert reply.has_error() and "fedmtl refused: privacy=none is below" in reply.error.reason
    assert "personal" not in ctx.state  # it did not train


def test_a_gram_query_is_refused_unless_the_floor_and_the_mode_allow_it(identity):
    query = Message(RecordDict({"config": ConfigRecord({"query": "gram"})}), dst_node_id=1000,
                    message_type=MessageType.QUERY)
    allowed, _ = _ask(compose(TINY), query)
    assert not allowed.has_error() and "gram" in allowed.content
    forbidden, _ = _ask(compose(TINY + ["client_floor.gram=false"]), query)
    assert forbidden.has_error() and "fedmtl refused: item Gram query" in forbidden.error.reason
    # a node's own config forbids it whatever the bound config says
    own, _ = _ask(compose(TINY), query, {"answer-gram": False})
    assert own.has_error() and "gram=false" in own.error.reason
    with pytest.raises(PrivacyRefused, match="privacy=secagg"):  # never in the clear under another mode
        check_gram(Floor(), compose(TINY + ["privacy=secagg"]))
    # client_clip_dp: a clipped part for the run's own DP Gram, within a floor that accepts the mode;
    # an active query in a run without click_mix is refused (the benchmark's probe got 943 answers)
    check_gram(Floor("client_clip_dp"), compose(TINY + ["privacy=client_clip_dp", "click_mix.weight=0.1"]))
    with pytest.raises(PrivacyRefused, match="without click_mix"):
        check_gram(Floor("client_clip_dp"), compose(TINY + ["privacy=client_clip_dp"]))
    with pytest.raises(PrivacyRefused, match="privacy floor secagg"):
        check_gram(Floor("secagg"), compose(TINY + ["privacy=client_clip_dp", "click_mix.weight=0.1"]))


def test_a_deployed_client_takes_its_floor_from_its_node_config_never_the_run_config():
    server_says = compose(TINY)  # client_floor.privacy=none in the run config
    assert client_floor({"privacy-floor": "secagg", "min-noise-multiplier": 0.8, "secagg-min-threshold": 4},
                        None) == Floor("secagg", True, True, 0.8, 4)
    assert client_floor({}, None) == Floor()  # deployed, nothing set: the defaults, not the server's block
    lowered = dict(server_says, client_floor={"privacy": "none"})
    assert client_floor({"privacy-floor": "secagg_dp"}, lowered).privacy == "secagg_dp"
    with pytest.raises(ConfigError, match="node-config.privacy=weak"):
        client_floor({"privacy-floor": "weak"}, None)
    with pytest.raises(ConfigError, match="client_floor.gram='maybe'"):
        compose(TINY + ["client_floor.gram=maybe"])


def test_a_deployed_clients_run_config_is_validated_like_a_command_line():
    good = compose(TINY)
    ctx = lambda text: Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),  # noqa: E731
                               run_config={"fedmtl-config": text})
    assert config_from_context(ctx(json.dumps(good)), None)["privacy"]["name"] == "none"
    bad = dict(good, privacy={"name": "secagg", "num_shares": 99})
    with pytest.raises(ConfigError, match="run config fedmtl-config: privacy"):
        config_from_context(ctx(json.dumps(bad)), None)
    with pytest.raises(ConfigError, match="not a JSON config"):
        config_from_context(ctx("{not json"), None)
