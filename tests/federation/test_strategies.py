"""strategy=: each name builds Flower's own class with the YAML's hyper-parameters,
and each shows its defining server step on hand-made client updates."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedmtl.config import compose
from fedmtl.errors import ConfigError
from fedmtl.federation.client_app import train_config
from fedmtl.federation.strategies import CLASSES, build_strategy, decay_arrays, server_rate, set_server_rate
from fedmtl.federation.sparse import sparse_payload
from fedmtl.knob_names import STRATEGIES

CONF = Path(__file__).resolve().parents[2] / "conf" / "strategy"


@pytest.fixture(autouse=True)
def server_identity():
    """Messages take their run id from the process's task identity, as under Flower."""
    saved = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = saved


class FakeClients:
    """A grid of clients whose reply is `update(received_w) -> (new_w, num_examples)`."""

    def __init__(self, *updates):
        self.updates = updates

    def get_node_ids(self):
        return list(range(1, len(self.updates) + 1))

    def send_and_receive(self, messages, timeout=None):
        replies = []
        for m in messages:
            m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
            new, n = self.updates[m.metadata.dst_node_id - 1](m.content["arrays"]["w"].numpy())
            replies.append(Message(RecordDict({"arrays": ArrayRecord({"w": Array(np.asarray(new, np.float32))}),
                                               "metrics": MetricRecord({"num-examples": n})}), reply_to=m))
        return replies


def sends(value, n=1):
    return lambda w: (np.asarray(value, np.float32), n)


def moves_by(delta, n=1):
    return lambda w: (w + np.asarray(delta, np.float32), n)


def server_round(strategy, grid, rnd, w):
    msgs = list(strategy.configure_train(rnd, ArrayRecord({"w": Array(np.asarray(w, np.float32))}),
                                         ConfigRecord(), grid))
    agg, _ = strategy.aggregate_train(rnd, grid.send_and_receive(msgs))
    return agg["w"].numpy()


def strategy(name, *overrides, clients=4):
    return build_strategy(compose([f"strategy={name}", f"num_clients={clients}", *overrides]))


def yaml_of(name):
    return yaml.safe_load((CONF / f"{name}.yaml").read_text())


# --- every name --------------------------------------------------------------

def test_names_classes_and_config_files_agree():
    assert tuple(CLASSES) == STRATEGIES
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(STRATEGIES)


@pytest.mark.parametrize("name", STRATEGIES)
def test_builds_flowers_class_with_the_yaml_hyper_parameters(name):
    s = strategy(name)
    assert isinstance(s, CLASSES[name])
    for key, value in yaml_of(name).items():
        if key != "name":
            assert getattr(s, key) == value, key


def test_hyper_parameters_are_overridable_and_a_wrong_one_is_a_config_error():
    assert strategy("fedadam", "strategy.eta=0.03").eta == 0.03
    with pytest.raises(ConfigError, match="strategy.etta: unknown key for strategy=fedadam"):
        strategy("fedadam", "+strategy.etta=1")


@pytest.mark.parametrize("name", STRATEGIES)
def test_server_step_keeps_the_dtype_sent(name):
    grid = FakeClients(moves_by([0.1, -0.2]), moves_by([0.3, 0.0]), moves_by([0.2, 0.1]))
    assert server_round(strategy(name, clients=3), grid, 1, [1.0, 1.0]).dtype == np.float32


# --- fedavg / fedprox --------------------------------------------------------

def test_fedavg_is_the_example_weighted_mean():
    grid = FakeClients(sends([1.0, 0.0], n=1), sends([4.0, 3.0], n=2))
    np.testing.assert_allclose(server_round(strategy("fedavg", clients=2), grid, 1, [0, 0]), [3.0, 2.0])


def test_fedprox_sends_mu_and_the_client_uses_it():
    cfg = compose(["strategy=fedprox", "strategy.proximal_mu=0.5", "num_clients=2"])
    s = build_strategy(cfg)
    msgs = list(s.configure_train(1, ArrayRecord({"w": Array(np.zeros(2, np.float32))}), ConfigRecord(),
                                  FakeClients(sends(0), sends(0))))
    assert msgs[0].content["config"]["proximal-mu"] == 0.5
    assert train_config(cfg).prox_mu == 0.5
    assert train_config(compose(["strategy=fedavg"])).prox_mu == 0.0


def test_fedprox_large_mu_keeps_the_local_model_near_the_global_one():
    from fedmtl.data import federation_for
    from fedmtl.model import build_model, shared_names
    from fedmtl.train import local_train
    from fedmtl.weighting import build_weighting

    cfg = compose(["dataset.n_users=40", "dataset.n_items=30", "num_clients=4"])
    fed = federation_for(cfg)
    data = fed.partition_data(0)

    def drift(mu):
        model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, seed=0)
        shared = shared_names(model, "encoder")
        params = dict(model.named_parameters())
        start = {n: params[n].detach().clone() for n in shared}
        tcfg = train_config(cfg)
        tcfg.epochs, tcfg.prox_mu = 12, mu
        local_train(model, data, cfg["tasks"], build_weighting(cfg["weighting"], cfg["tasks"]), tcfg, seed=0,
                    shared=shared)
        return float(sum((params[n].detach() - start[n]).pow(2).sum() for n in shared).sqrt())

    free, proximal = drift(0.0), drift(100.0)
    assert proximal < 0.1 * free


# --- server optimisers ------------------------------------------------------

def test_fedadam_takes_an_adam_step_on_the_mean_update():
    """Adam on the pseudo-gradient: each coordinate moves by about eta whatever the size
    of its mean update, where FedAvg would move it by the mean update itself."""
    cfg = yaml_of("fedadam")
    eta, b1, b2, tau = cfg["eta"], cfg["beta_1"], cfg["beta_2"], cfg["tau"]
    s = strategy("fedadam", clients=2)
    grid = FakeClients(moves_by([0.1, 10.0]), moves_by([0.1, 10.0]))
    x0 = np.array([1.0, 1.0])
    x1 = server_round(s, grid, 1, x0)
    delta = np.array([0.1, 10.0])  # the clients' mean update: FedAvg would land on x0 + delta
    m, v = (1 - b1) * delta, (1 - b2) * delta ** 2
    eta_t = eta * np.sqrt(1 - b2 ** 2) / (1 - b1 ** 2)  # Flower's bias correction at round 1
    np.testing.assert_allclose(x1, x0 + eta_t * m / (np.sqrt(v) + tau), rtol=1e-5)
    step = x1 - x0
    assert 0.85 < step[0] / step[1] < 1.0  # deltas 100x apart, steps nearly equal
    assert step[1] < 0.1 * delta[1]
    # round 2: the moments carry over
    x2 = server_round(s, grid, 2, x1)
    m2, v2 = b1 * m + (1 - b1) * delta, b2 * v + (1 - b2) * delta ** 2
    eta_t = eta * np.sqrt(1 - b2 ** 3) / (1 - b1 ** 3)
    np.testing.assert_allclose(x2, x1 + eta_t * m2 / (np.sqrt(v2) + tau), rtol=1e-5)


def test_fedyogi_second_moment_moves_additively_by_sign():
    """Yogi: v changes by at most (1 - beta_2) delta^2 a round, in the direction of
    delta^2 (Adam would forget a large v geometrically)."""
    cfg = yaml_of("fedyogi")
    eta, b1, b2, tau = cfg["eta"], cfg["beta_1"], cfg["beta_2"], cfg["tau"]
    s = strategy("fedyogi", clients=1)
    x, m, v = np.array([0.0, 0.0]), np.zeros(2), np.zeros(2)
    for rnd, d in enumerate([np.array([10.0, 0.1]), np.array([0.1, 10.0])], start=1):
        x_new = server_round(s, FakeClients(moves_by(d)), rnd, x)
        m = b1 * m + (1 - b1) * d
        adam_v = b2 * v + (1 - b2) * d ** 2
        v = v - (1 - b2) * d ** 2 * np.sign(v - d ** 2)
        np.testing.assert_allclose(x_new, x + eta * m / (np.sqrt(v) + tau), rtol=1e-5)
        x = x_new
    np.testing.assert_allclose(v, [1.0 - 1e-4, 1e-4 + 1.0])  # after round 1's v = [1, 1e-4]
    assert v[0] - adam_v[0] > 0.009  # Adam would have shed 1% of the large v


def test_fedadagrad_accumulates_squared_updates():
    cfg = yaml_of("fedadagrad")
    eta, tau = cfg["eta"], cfg["tau"]
    s = strategy("fedadagrad", clients=1)
    x, v = np.array([0.0]), np.zeros(1)
    steps = []
    for rnd in (1, 2, 3):
        x_new = server_round(s, FakeClients(moves_by([0.5])), rnd, x)
        v = v + 0.25  # v_t = v_{t-1} + delta^2, never forgotten
        m = 0.5  # FedAdagrad has no momentum (beta_1 = 0)
        np.testing.assert_allclose(x_new, x + eta * m / (np.sqrt(v) + tau), rtol=1e-5)
        steps.append(float(x_new[0] - x[0]))
        x = x_new
    assert steps[0] > steps[1] > steps[2]  # the same update earns ever smaller steps


def test_fedavgm_accumulates_server_momentum():
    """Clients always move by d: FedAvg steps d every round, FedAvgM steps d, then (1 + beta) d."""
    beta = yaml_of("fedavgm")["server_momentum"]
    assert beta > 0
    d = np.array([0.5, -1.0])
    s, plain = strategy("fedavgm", clients=2), strategy("fedavg", clients=2)
    grid = FakeClients(moves_by(d), moves_by(d))
    x1 = server_round(s, grid, 1, [0.0, 0.0])
    x2 = server_round(s, grid, 2, x1)
    np.testing.assert_allclose(x1, d, rtol=1e-6)
    np.testing.assert_allclose(x2 - x1, (1 + beta) * d, rtol=1e-6)
    np.testing.assert_allclose(server_round(plain, grid, 2, x1) - x1, d, rtol=1e-6)


# --- robust aggregation -----------------------------------------------------

def outlier_grid():
    honest = [[1.0, 2.0], [1.2, 2.2], [0.8, 1.8], [1.6, 1.9]]
    return FakeClients(*(sends(v) for v in honest), sends([1e6, -1e6]))


def test_fedmedian_ignores_one_outlier_client():
    np.testing.assert_allclose(server_round(strategy("fedmedian", clients=5), outlier_grid(), 1, [0, 0]),
                               [1.2, 1.9], rtol=1e-6)
    assert abs(server_round(strategy("fedavg", clients=5), outlier_grid(), 1, [0, 0])[0]) > 1e5


def test_fedtrimmedavg_trims_the_tails():
    """beta 0.2 of 5 clients: the lowest and highest value of each coordinate are dropped."""
    assert yaml_of("fedtrimmedavg")["beta"] == 0.2
    np.testing.assert_allclose(server_round(strategy("fedtrimmedavg", clients=5), outlier_grid(), 1, [0, 0]),
                               [(1.0 + 1.2 + 1.6) / 3, (1.8 + 1.9 + 2.0) / 3], rtol=1e-6)


# --- with exchange=sparse -----------------------------------------------------

@pytest.mark.parametrize("name", ["fedmedian", "fedtrimmedavg"])
def test_whole_array_aggregators_refuse_sparse_uploads(name):
    with pytest.raises(ConfigError, match=f"strategy={name} with exchange=sparse"):
        strategy(name, "exchange=sparse")


def test_server_step_runs_on_the_row_wise_mean_of_sparse_uploads():
    """FedAvgM over row-sparse uploads (updates on an all-zero model): rows nobody sent keep
    their value, sent rows are averaged over their senders, then the momentum step applies."""
    s = strategy("fedavgm", "exchange=sparse", clients=2)
    name = "encoder.item_emb.weight"
    current = np.zeros((3, 2), np.float32)

    def upload(rows, value):
        trained = {name: np.full((3, 2), value, np.float32), "dense": np.array([value], np.float32)}
        zeros = {k: np.zeros_like(v) for k, v in trained.items()}
        return lambda rec: RecordDict({
            "arrays": ArrayRecord({k: Array(v) for k, v in sparse_payload(trained, zeros, np.array(rows), 3).items()}),
            "metrics": MetricRecord({"num-examples": 1})})

    sent = ArrayRecord({name: Array(current), "dense": Array(np.zeros(1, np.float32))})
    msgs = list(s.configure_train(1, sent, ConfigRecord(), FakeClients(sends(0), sends(0))))
    replies = []
    for m, make in zip(msgs, [upload([0], 1.0), upload([0, 1], 3.0)]):
        m.metadata.__dict__["_message_id"] = uuid.uuid4().hex
        replies.append(Message(make(None), reply_to=m))
    agg, _ = s.aggregate_train(1, replies)
    assert list(agg.keys()) == [name, "dense"]
    np.testing.assert_allclose(agg[name].numpy(), [[2.0, 2.0], [3.0, 3.0], [0.0, 0.0]])
    np.testing.assert_allclose(agg["dense"].numpy(), [2.0])


# --- server learning-rate schedule -------------------------------------------

@pytest.mark.parametrize("name,key", [("fedadam", "eta"), ("fedavgm", "server_learning_rate")])
def test_cosine_schedule_runs_from_the_configured_rate_to_its_final_fraction(name, key):
    cfg = compose([f"strategy={name}", "num_rounds=11", "server_lr.schedule=cosine", "server_lr.final=0.2"])
    base = cfg["strategy"][key]
    rates = [server_rate(cfg, r) for r in range(1, 12)]
    assert rates[0] == pytest.approx(base) and rates[-1] == pytest.approx(0.2 * base)
    assert rates[5] == pytest.approx(0.6 * base)  # half way: the mean of the two ends
    assert all(a > b for a, b in zip(rates, rates[1:]))
    constant = compose([f"strategy={name}", "num_rounds=11"])
    assert {server_rate(constant, r) for r in (1, 6, 11)} == {base}


def test_a_zero_rate_round_leaves_the_fedadam_model_where_it_was():
    """set_server_rate reaches the step Flower takes: with server_lr.final=0 the last round
    moves nothing, although the clients' updates and the moments are not zero."""
    cfg = compose(["strategy=fedadam", "num_clients=2", "num_rounds=3", "server_lr.schedule=cosine"])
    s = build_strategy(cfg)
    grid = FakeClients(moves_by([0.3, -1.0]), moves_by([0.1, -2.0]))
    x = np.array([1.0, 1.0])
    steps = []
    for rnd in (1, 2, 3):
        set_server_rate(s, cfg, rnd)
        x_new = server_round(s, grid, rnd, x)
        steps.append(np.abs(x_new - x).max())
        x = x_new
    assert steps[0] > 0.01 and steps[1] > 0.01
    assert steps[2] == 0.0


def test_a_schedule_needs_a_strategy_with_a_server_rate():
    with pytest.raises(ConfigError, match="server_lr.schedule=cosine with strategy=fedavg"):
        compose(["strategy=fedavg", "server_lr.schedule=cosine"])
    with pytest.raises(ConfigError, match="server_lr.schedule=linear"):
        compose(["strategy=fedadam", "server_lr.schedule=linear"])
    with pytest.raises(ConfigError, match="server_lr.final=1.5"):
        compose(["strategy=fedadam", "server_lr.schedule=cosine", "server_lr.final=1.5"])


# --- server_decay -------------------------------------------------------------

@pytest.mark.parametrize("name", ["fedavg", "fedadam", "fedyogi", "fedadagrad", "fedprox", "fedmedian"])
def test_server_decay_scales_the_aggregate_by_one_minus_d(name):
    """Decoupled decay: the round's model is (1 - d) times the step the strategy takes alone."""
    grid = FakeClients(moves_by([0.1, -0.2]), moves_by([0.3, 0.0]), moves_by([0.2, 0.1]))
    plain = server_round(strategy(name, clients=3), grid, 1, [1.0, -2.0])
    decayed = server_round(strategy(name, "server_decay=0.1", clients=3), grid, 1, [1.0, -2.0])
    assert decayed.dtype == np.float32
    np.testing.assert_allclose(decayed, 0.9 * plain, rtol=1e-6)


def test_fedavgm_steps_from_the_decayed_model():
    """FedAvgM keeps its last output: with server_decay it must keep the decayed one, so that
    round 2's pseudo-gradient is the clients' move (d), not the decay undone."""
    beta = yaml_of("fedavgm")["server_momentum"]
    d = np.array([0.5, -1.0])
    grid = FakeClients(moves_by(d), moves_by(d))
    s = strategy("fedavgm", "server_decay=0.2", clients=2)
    x1 = server_round(s, grid, 1, [1.0, 1.0])
    np.testing.assert_allclose(x1, 0.8 * (np.array([1.0, 1.0]) + d), rtol=1e-6)
    x2 = server_round(s, grid, 2, x1)
    np.testing.assert_allclose(x2, 0.8 * (x1 + (1 + beta) * d), rtol=1e-6)


def test_server_decay_reaches_rows_no_sparse_upload_carried():
    """exchange=sparse: a client's decay would only reach the rows it sends; the server's
    reaches every row of the shared table."""
    s = strategy("fedavg", "exchange=sparse", "server_decay=0.5", clients=1)
    name = "encoder.item_emb.weight"
    current = np.full((3, 2), 2.0, np.float32)
    trained = {name: current + 1.0}
    payload = sparse_payload(trained, {name: current}, np.array([0]), 3)
    msgs = list(s.configure_train(1, ArrayRecord({name: Array(current)}), ConfigRecord(), FakeClients(sends(0))))
    msgs[0].metadata.__dict__["_message_id"] = uuid.uuid4().hex
    reply = Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in payload.items()}),
                                "metrics": MetricRecord({"num-examples": 1})}), reply_to=msgs[0])
    agg, _ = s.aggregate_train(1, [reply])
    np.testing.assert_allclose(agg[name].numpy(), [[1.5, 1.5], [1.0, 1.0], [1.0, 1.0]])


@pytest.mark.parametrize("value,message", [("1.0", "server_decay=1.0: must be < 1"),
                                           ("-0.1", "server_decay=-0.1: must be >= 0"),
                                           ("fast", "server_decay='fast': expected a number")])
def test_server_decay_out_of_range_is_a_config_error(value, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        compose([f"server_decay={value}"])


def test_server_decay_keeps_scalar_arrays_arrays():
    """A 0-d array (a head's offset, shared under aggregate=all) stays a 0-d float32 array."""
    out = decay_arrays(ArrayRecord({"offset": Array(np.array(2.0, np.float32)),
                                    "w": Array(np.ones((2, 2), np.float64))}), 0.5, {"w": np.float32})
    assert out["offset"].numpy().shape == () and out["offset"].numpy().dtype == np.float32
    assert float(out["offset"].numpy()) == 1.0
    assert out["w"].numpy().dtype == np.float32 and np.all(out["w"].numpy() == 0.5)


@pytest.mark.parametrize("aggregate", ["encoder", "all"])
def test_a_simulated_round_saves_the_decayed_model(tmp_path, aggregate):
    """Config to server: one FedAvg round with server_decay=0.25 saves 0.75 x the plain round's
    model; aggregate=all also sends the heads' 0-d offsets (the MovieLens preset's setting)."""
    from fedmtl.simulate import run

    tiny = ["dataset.n_users=40", "dataset.n_items=30", "num_clients=4", "num_rounds=1", "device=cpu",
            f"aggregate={aggregate}"]
    run(compose(tiny), tmp_path / "plain")
    run(compose(tiny + ["server_decay=0.25"]), tmp_path / "decayed")
    plain, decayed = (torch.load(tmp_path / d / "model_shared.pt") for d in ("plain", "decayed"))
    assert plain.keys() == decayed.keys() and len(plain) > 0
    for k in plain:
        torch.testing.assert_close(decayed[k], 0.75 * plain[k], rtol=1e-5, atol=1e-7)


def test_train_aggregation_gives_flowers_weighted_means_exactly():
    """The strategies' train_metrics_aggr_fn (a plain-dict sum) gives what Flower's own
    aggregate_metricrecords gives, float for float, lists included."""
    from flwr.serverapp.strategy.strategy_utils import aggregate_metricrecords

    from fedmtl.federation.strategies import train_aggregation

    rng = np.random.default_rng(0)
    records = [RecordDict({"metrics": MetricRecord({"num-examples": int(rng.integers(1, 300)),
                                                    "loss.rating": float(rng.normal()),
                                                    "loss.click": float(rng.exponential()),
                                                    "curve": [float(x) for x in rng.normal(size=3)]})})
               for _ in range(57)]
    got, want = train_aggregation(records, "num-examples"), aggregate_metricrecords(records, "num-examples")
    assert dict(got) == dict(want) and "num-examples" not in got and len(got) == 3
    assert build_strategy(compose([])).train_metrics_aggr_fn is train_aggregation
