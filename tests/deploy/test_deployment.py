"""A real Flower deployment on 127.0.0.1: flower-superlink, flower-supernode x N and
`flwr run` as separate processes (fedmtl.deploy.local), with a temporary FLWR_HOME
and a copy of the app. Every process started is stopped, whatever the outcome, and
the test checks that none is left."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from fedmtl.config import compose
from fedmtl.deploy.local import LocalDeployment, free_port
from fedmtl.runfiles import read_jsonl
from fedmtl.simulate import run

pytestmark = pytest.mark.skipif(shutil.which("flower-superlink") is None or shutil.which("flwr") is None,
                                reason="Flower's deployment commands are not installed")

TINY = ["dataset.n_users=40", "dataset.n_items=60", "dataset.mean_interactions=15", "local_epochs=1",
        "train.batch_size=64", "model.dim=8", "save_model=true"]


@pytest.fixture
def deployment(tmp_path, request):
    deps = []

    def start(n, **kw):
        dep = LocalDeployment(tmp_path / f"dep{len(deps)}", n, **kw)
        deps.append(dep)
        return dep.start()

    yield start
    for dep in deps:
        dep.stop()
        left = dep.ours()
        assert not left, f"processes left running: {[p.pid for p in left]}"
        for name, proc in dep.procs.items():
            assert proc.poll() is not None, f"{name} still running"


def test_two_supernodes_two_rounds_through_flwr_run(deployment, tmp_path):
    dep = deployment(2)
    out = tmp_path / "run"
    # click_mix: each evaluation message also carries rows of EASE's B (server_app.ItemItem, arrays.py's
    # fast arrays, whose bytes are made only when a message leaves the process, as here over gRPC)
    mix = ["click_mix.weight=0.5", "click_mix.lam=5"]
    run_id = dep.submit(["num_clients=2", "num_rounds=2", "seed=3", *mix, *TINY], out)
    status = dep.wait_run(run_id, timeout=240, out_dir=out)
    assert status == "finished:completed", dep.run_log(run_id)[-3000:]

    cfg = json.loads((out / "config.json").read_text())
    assert cfg["num_rounds"] == 2 and cfg["seed"] == 3 and cfg["engine"] == "deployment"
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["sampled"] == 2 and r["answered"] == 2 and r["failed"] == 0 for r in rows)
    assert all(r["bytes_up"] > 0 and r["test"]["clients"] == 2 for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and "stopped" not in summary
    assert 0 < summary["metrics"]["rating.rmse"] < 3
    assert (out / "model_shared.pt").stat().st_size > 0
    assert "finished: 2 rounds" in dep.run_log(run_id)
    # the same apps as the simulation: the deployed run reproduces it
    sim = run(compose(["num_clients=2", "num_rounds=2", "seed=3", *mix, *TINY]), tmp_path / "sim")
    assert sim["item_gram_bytes_up"] > 0 and summary["item_gram_bytes_up"] == sim["item_gram_bytes_up"]
    assert [r["bytes_down"] for r in rows] == [r["bytes_down"] for r in read_jsonl(tmp_path / "sim" / "metrics.jsonl")]
    for key in ("rating.rmse", "like.auc", "click.ndcg@10"):
        assert summary["metrics"][key] == pytest.approx(sim["metrics"][key], abs=1e-5), key


def test_killed_supernode_does_not_hang_the_run(deployment, tmp_path):
    """SuperNode 1 is SIGKILLed after round 1: the round it misses ends at round_timeout
    (or when the SuperLink declares it gone) and the run goes on with node 0."""
    dep = deployment(2)
    out = tmp_path / "run"
    run_id = dep.submit(["num_clients=2", "num_rounds=2", "min_train_clients=1", "min_evaluate_clients=1",
                         "round_timeout=60", "eval_every=2", *TINY], out)
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or not read_jsonl(out / "metrics.jsonl"):
        assert time.time() < deadline, dep.run_log(run_id)[-3000:]
        time.sleep(0.5)
    dep.kill_node(1)
    status = dep.wait_run(run_id, timeout=240, out_dir=out)
    assert status == "finished:completed", dep.run_log(run_id)[-3000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[0]["answered"] == 2 and rows[0]["failed"] == 0
    assert rows[1]["failed"] == 1 and rows[1]["answered"] == 1  # the dead node missed, node 0 carried on
    assert rows[1]["test"]["clients"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 2 and "stopped" not in summary


def test_killed_supernode_stops_the_run_with_a_clear_message(deployment, tmp_path):
    dep = deployment(2)
    out = tmp_path / "run"
    run_id = dep.submit(["num_clients=2", "num_rounds=2", "on_client_failure=stop", "round_timeout=60", "eval_every=2",
                         *TINY], out)
    deadline = time.time() + 180
    while not (out / "metrics.jsonl").exists() or not read_jsonl(out / "metrics.jsonl"):
        assert time.time() < deadline, dep.run_log(run_id)[-3000:]
        time.sleep(0.5)
    dep.kill_node(1)
    status = dep.wait_run(run_id, timeout=180, out_dir=out)
    assert status == "finished:failed"
    summary = json.loads((out / "summary.json").read_text())
    assert "on_client_failure=stop" in summary["stopped"] and "round 2 train: 1 of 2 node(s)" in summary["stopped"]
    assert len(read_jsonl(out / "metrics.jsonl")) == summary["rounds"] == 1
    assert "on_client_failure=stop" in dep.run_log(run_id)


def test_a_tampering_supernode_is_left_out_and_the_deployed_run_finishes(deployment, tmp_path, monkeypatch):
    """SuperNode 1 sends every training reply with an array one row short (node config
    inject-reply, faults.inject_reply_mod): once, that raised inside the ServerApp and ended
    the deployed run. Now the SuperLink's run finishes, node 1 is counted invalid in both
    rounds, and the model is the simulation's in which client 1 fails every round."""
    import numpy as np
    import torch

    import fedmtl.federation.client_app as ca

    dep = deployment(2, node_config=["partition-id=0 num-partitions=2",
                                     'partition-id=1 num-partitions=2 inject-reply="shape"'])
    out = tmp_path / "run"
    overrides = ["num_clients=2", "num_rounds=2", "min_train_clients=1", "min_evaluate_clients=1", *TINY]
    run_id = dep.submit(overrides, out)
    status = dep.wait_run(run_id, timeout=240, out_dir=out)
    assert status == "finished:completed", dep.run_log(run_id)[-3000:]
    rows = read_jsonl(out / "metrics.jsonl")
    assert [r["round"] for r in rows] == [1, 2]
    assert all(r["answered"] == 1 and r["failed_by"]["invalid"] == 1 and r["failed"] == 1 for r in rows), rows
    assert dep.run_log(run_id).count("sent an invalid reply (encoder.") == 2
    real = ca.make_client_app

    def client_1_fails(cfg=None):
        app = real(cfg)

        def handle(msg, ctx):
            reply = app(msg, ctx)  # its personal state moves on as the tampering node's did
            if int(ctx.node_config["partition-id"]) == 1 and msg.metadata.message_type == "train":
                raise RuntimeError("client 1 fails")
            return reply
        return handle

    monkeypatch.setattr(ca, "make_client_app", client_1_fails)
    run(compose(overrides + ["backend=inprocess"]), tmp_path / "sim")  # the ClientApp path: it fails
    deployed, sim = (torch.load(p / "model_shared.pt", weights_only=True) for p in (out, tmp_path / "sim"))
    for k in sim:
        np.testing.assert_allclose(deployed[k].numpy(), sim[k].numpy(), atol=1e-6, err_msg=k)


def test_tls_with_supernode_authentication_refuses_an_unregistered_node(deployment, tmp_path):
    """TLS on every API and --enable-supernode-auth: the registered SuperNode is let in,
    one with a key nobody registered is refused (Flower's exit code 305)."""
    from fedmtl.deploy.certs import generate

    dep = deployment(1, tls=True, auth=True)
    assert dep.connected_nodes() == 1
    generate(tmp_path / "rogue", supernodes=1)
    cmd = dep.supernode_cmd(0)
    cmd[cmd.index("--auth-supernode-private-key") + 1] = str(tmp_path / "rogue" / "supernode-0")
    rogue = dep._spawn("rogue", cmd)
    rogue.wait(timeout=60)
    assert rogue.returncode != 0
    assert "Failed to activate SuperNode" in dep.log("rogue")
    assert dep.connected_nodes() == 1
    # and a plain-text client cannot talk to the TLS SuperLink
    plain = dep._spawn("plain", ["flower-supernode", "--insecure", "--superlink", f"{dep.host}:{dep.port}",
                                 "--port", str(free_port()), "--node-config", "partition-id=0",
                                 "--max-retries", "1", "--max-wait-time", "5"])
    plain.wait(timeout=60)
    assert plain.returncode != 0 and dep.connected_nodes() == 1


def test_a_supernode_with_trusted_entities_refuses_an_unsigned_app(deployment, tmp_path):
    """Flower 1.41's only switch that restricts what a SuperNode runs: with
    --trusted-entities it runs only a FAB signed by one of the listed Ed25519 keys
    (signatures come with apps fetched from Flower Hub). An app sent with `flwr run .`
    carries none, so the node answers with an error and runs none of its code; the
    run stops with the node's reason."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    pub = ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
        serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    trusted = tmp_path / "trusted-entities.yaml"
    trusted.write_text(f"fpk_fedmtl_test: '{pub} publisher'\n")
    dep = deployment(1, node_args=["--trusted-entities", str(trusted)])
    out = tmp_path / "run"
    run_id = dep.submit(["num_clients=1", "num_rounds=1", "min_train_clients=1", "round_timeout=60",
                         "on_client_failure=stop", *TINY], out)
    assert dep.wait_run(run_id, timeout=180, out_dir=out) == "finished:failed"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 0 and "The FAB could not be verified" in summary["stopped"]
    assert "The FAB could not be verified" in dep.log("supernode-0")
