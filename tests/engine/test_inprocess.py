"""The in-process engine drives the same apps as Flower's engine and gives the same results."""

import json
import sqlite3
import pickle

import pytest

from fedmtl.config import compose
from fedmtl.simulate import run

TINY = ["dataset.n_users=40", "dataset.n_items=30", "dataset.mean_interactions=12", "num_clients=5",
        "num_rounds=2", "local_epochs=1", "save_model=false"]


def final(tmp_path, overrides):
    engine = [] if any(o.startswith("backend=") for o in overrides) else ["backend=inprocess"]
    return run(compose(TINY + engine + overrides), tmp_path)["metrics"]


def assert_same(a: dict, b: dict, tol=1e-5):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=tol), k


def test_two_workers_match_one(tmp_path):
    one = final(tmp_path / "one", [])
    two = final(tmp_path / "two", ["backend.workers=2"])
    assert_same(one, two)


def test_disk_state_matches_memory_and_holds_every_client(tmp_path):
    mem = final(tmp_path / "mem", [])
    disk = final(tmp_path / "disk", ["backend.state=disk"])
    assert_same(mem, disk)
    db = sqlite3.connect(tmp_path / "disk" / "client_state.sqlite")
    rows = db.execute("SELECT node, blob FROM state").fetchall()
    assert sorted(n for n, _ in rows) == [1000 + k for k in range(5)]
    for _, blob in rows:
        state = pickle.loads(blob)
        names = set(state["personal"].keys())
        assert "personal.user_emb.weight" in names
        assert not any(n.startswith("encoder.") for n in names)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_new_run_in_a_used_folder_starts_from_fresh_client_states(tmp_path, workers):
    """backend.state=disk: a second run into the same folder starts every client afresh (the
    states the first run left there belong to its last round): the same metrics twice."""
    over = ["backend.state=disk", f"backend.workers={workers}"]
    first = final(tmp_path / "run", over)
    again = final(tmp_path / "run", over)
    assert again == first


def test_personal_state_survives_rounds(tmp_path):
    """Round 2 starts from the personal parameters round 1 left, not from the initial ones."""
    from fedmtl.engine.inprocess import InProcessGrid, TaskIdentity
    from fedmtl.federation.client_app import make_client_app
    from fedmtl.federation.server_app import make_server_app
    from flwr.app import Context, RecordDict

    cfg = compose(TINY + ["num_rounds=1", "backend=inprocess"])
    cfg["output_dir"] = str(tmp_path)
    grid = InProcessGrid(make_client_app(cfg), 5)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 1, 1
    make_server_app(cfg)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    after_one = grid.states.get(1000).state["personal"]["personal.user_emb.weight"].numpy().copy()
    make_server_app(cfg)(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config={}))
    after_two = grid.states.get(1000).state["personal"]["personal.user_emb.weight"].numpy()
    assert not (after_one == after_two).all()
    # a fresh client would start elsewhere: round 2 continued from round 1's state
    from fedmtl.federation.client_state import client_model
    from fedmtl.data import federation_for
    fresh = client_model(cfg, federation_for(cfg).partition_data(0), RecordDict(), 0)
    assert not (fresh.personal.user_emb.weight.detach().numpy() == after_one).all()


def test_crashing_client_costs_its_reply_not_the_run(tmp_path, monkeypatch):
    import fedmtl.federation.client_app as ca

    real = ca._client_data

    def flaky(cfg, context):
        if int(context.node_config["partition-id"]) == 2:
            raise RuntimeError("disk on fire")
        return real(cfg, context)

    monkeypatch.setattr(ca, "_client_data", flaky)
    summary = run(compose(TINY + ["backend=inprocess"]), tmp_path)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["failed"] for r in rows] == [1, 1]
    assert [r["answered"] for r in rows] == [4, 4]
    assert summary["metrics"]["rating.rmse"] > 0


def test_ray_backend_matches_inprocess(tmp_path):
    pytest.importorskip("ray")
    inproc = final(tmp_path / "inproc", [])
    ray_m = final(tmp_path / "ray", ["backend=ray"])
    assert_same(inproc, ray_m)


def _crashing_app():
    """A ClientApp whose node 1001 raises on training; the others reply with an empty record."""
    from flwr.app import Message, RecordDict
    from flwr.clientapp import ClientApp

    app = ClientApp()

    @app.train()
    def train(msg, context):
        if context.node_id == 1001:
            raise RuntimeError("disk full on this client")
        return Message(RecordDict({}), reply_to=msg)

    return app


def test_a_worker_process_logs_through_the_parent(caplog):
    """A client that crashes in a worker process: its one WARNING line (client and node named) is
    logged by the parent, through its handlers (here caplog's), before the round's replies return;
    the other clients answer."""
    import logging

    from flwr.app import Message, RecordDict
    from flwr.app.message_type import MessageType

    from fedmtl.engine.inprocess import InProcessGrid, run_on_grid

    seen = {}

    def server(grid, context):
        msgs = [Message(RecordDict({}), dst_node_id=n, message_type=MessageType.TRAIN) for n in grid.get_node_ids()]
        replies = list(grid.send_and_receive(msgs))
        seen["errors"] = sorted(r.metadata.src_node_id for r in replies if r.has_error())
        seen["logged_before_return"] = "disk full on this client" in caplog.text

    caplog.set_level(logging.INFO, logger="fedmtl")
    run_on_grid(server, InProcessGrid(_crashing_app(), 4, workers=2))
    assert seen == {"errors": [1001], "logged_before_return": True}
    crash = [r for r in caplog.records if "disk full" in r.getMessage()]
    assert len(crash) == 1 and crash[0].levelno == logging.WARNING
    assert crash[0].getMessage() == "client 1 (node 1001) failed: RuntimeError: disk full on this client"
