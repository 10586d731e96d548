"""The deployed apps without processes: a node's partition and data, the run folder,
the bounded waits and the failure policy, test certificates."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch
from flwr.app import Context, RecordDict

from fedmtl.config import compose
from fedmtl.data import federation_for
from fedmtl.deploy.export import export_partitions
from fedmtl.errors import ConfigError
from fedmtl.federation import deployed
from fedmtl.federation.failures import RoundFailure, check_replies, wait_for_nodes

SMALL = ["num_clients=3", "dataset.n_users=30", "dataset.n_items=40", "dataset.mean_interactions=10"]


def ctx(node_config=None, run_config=None, run_id=7):
    return Context(run_id=run_id, node_id=1, node_config=node_config or {}, state=RecordDict(),
                   run_config=run_config or {})


def test_node_partition_is_checked_against_the_run():
    cfg = compose(SMALL)
    assert deployed.node_partition(ctx({"partition-id": 2, "num-partitions": 3}), cfg) == 2
    with pytest.raises(ConfigError, match="partition-id: missing"):
        deployed.node_partition(ctx({}), cfg)
    with pytest.raises(ConfigError, match="num-partitions=4: the run has num_clients=3"):
        deployed.node_partition(ctx({"partition-id": 0, "num-partitions": 4}), cfg)
    with pytest.raises(ConfigError, match="partition-id=3: the run has num_clients=3, so 0..2"):
        deployed.node_partition(ctx({"partition-id": 3}), cfg)
    with pytest.raises(ConfigError, match="expected an integer"):
        deployed.node_partition(ctx({"partition-id": "zero"}), cfg)


def test_a_node_with_its_own_files_gets_exactly_its_partition(tmp_path):
    cfg = compose(SMALL)
    export_partitions(cfg, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["federation_meta.json", "partition-0", "partition-1", "partition-2"]
    whole = federation_for(cfg)
    for k in range(3):
        pid, own = deployed.node_data(cfg, ctx({"partition-id": k, "split-path": str(tmp_path / f"partition-{k}")}))
        ref = whole.partition_data(k)
        assert pid == k
        np.testing.assert_array_equal(own.users, ref.users)
        for f in ("train_u", "train_i", "train_r", "test_u", "test_i", "test_r"):
            a, b = getattr(own, f), getattr(ref, f)
            # same rows, possibly in another order within a user
            order_a = torch.argsort(a.double() * 1e6 + getattr(own, f.split("_")[0] + "_i").double())
            order_b = torch.argsort(b.double() * 1e6 + getattr(ref, f.split("_")[0] + "_i").double())
            assert torch.equal(a[order_a], b[order_b]), f
    # the files hold only that partition's users
    users0 = {int(line.split("\t")[0]) for line in (tmp_path / "partition-0" / "train.tsv").read_text().splitlines()}
    assert users0 == set(int(u) for u in whole.dataset.raw_user_ids[whole.clients[0]])


def test_missing_split_path_is_one_clear_line(tmp_path):
    with pytest.raises(ConfigError, match="split-path=.*no train.tsv"):
        deployed.node_data(compose(SMALL), ctx({"partition-id": 0, "split-path": str(tmp_path / "nowhere")}))


def test_run_folder_and_summary(tmp_path, monkeypatch):
    cfg = compose(SMALL)
    out = deployed.start_run(ctx(run_config={"output-dir": str(tmp_path / "r")}), cfg)
    assert out == (tmp_path / "r").resolve()
    written = json.loads((out / "config.json").read_text())
    assert written["run_id"] == 7 and written["num_clients"] == 3 and written["output_dir"] == str(out)
    monkeypatch.chdir(tmp_path)
    default = deployed.run_dir(ctx(run_config={"output-dir": ""}, run_id=99))
    assert default.parts[:2] == ("outputs", "deployed") and default.name.endswith("-run99")


def test_stopped_run_says_why_and_keeps_finished_rounds(tmp_path):
    cfg = compose(SMALL)

    def two_rounds_then_fail(grid, cfg, out_dir):
        for r in (1, 2):
            (out_dir / "metrics.jsonl").open("a").write(json.dumps({"round": r}) + "\n")
        raise RoundFailure("round 3 train: 1 of 3 node(s) failed; stopping (on_client_failure=stop)")

    rc = {"output-dir": str(tmp_path), "overrides": " ".join(SMALL)}
    with pytest.raises(deployed.RoundStopped, match="round 3 train.*2 finished round"):
        deployed.serve(None, ctx(run_config=rc), two_rounds_then_fail)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["rounds"] == 2 and summary["stopped"].startswith("round 3 train")


class FakeGrid:
    def __init__(self, counts):
        self.counts = list(counts)

    def get_node_ids(self):
        n = self.counts.pop(0) if len(self.counts) > 1 else self.counts[0]
        return list(range(n))


def test_wait_for_nodes_is_bounded():
    assert len(wait_for_nodes(FakeGrid([0, 1, 2]), 2, timeout=5, rnd=1, stage="train", poll=0.01).get_node_ids()) == 2
    t0 = time.time()
    with pytest.raises(RoundFailure, match=r"round 4 train: 1 node\(s\) connected, 2 needed .*round_timeout=0.3s"):
        wait_for_nodes(FakeGrid([1]), 2, timeout=0.3, rnd=4, stage="train", poll=0.05)
    assert time.time() - t0 < 3


def test_flowers_own_wait_for_nodes_is_bounded_too():
    """A node lost between our wait and the strategy's sampling: Flower's sample_nodes
    loops until enough nodes connect; the bounded grid ends that loop."""
    from flwr.serverapp.strategy.strategy_utils import sample_nodes

    from fedmtl.federation.failures import BoundedGrid

    grid = BoundedGrid(FakeGrid([1]), needed=2, deadline=time.time() + 0.5, timeout=0.5, rnd=3, stage="evaluate")
    t0 = time.time()
    with pytest.raises(RoundFailure, match=r"round 3 evaluate: 1 node\(s\) connected, 2 needed \(min_evaluate_clients\)"):
        sample_nodes(grid, min_available_nodes=2, sample_size=2)
    assert time.time() - t0 < 5


@pytest.fixture
def identity():
    from flwr.supercore.task_identity import TaskIdentity

    old = (TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 7, 0
    yield
    TaskIdentity._task_id, TaskIdentity._run_id, TaskIdentity._node_id = old


def test_failure_policy_on_missing_and_failed_replies(identity):
    from flwr.app import Error, Message, RecordDict as RD

    msgs = [Message(RD(), dst_node_id=n, message_type="train") for n in (11, 12)]
    ok = Message(RD(), reply_to=msgs[0])
    cfg = {"on_client_failure": "continue", "round_timeout": 5}
    check_replies(cfg, 1, "train", msgs, [ok])  # continue: no exception
    with pytest.raises(RoundFailure, match=r"round 1 train: 1 of 2 node\(s\).*node 12: no reply.*on_client_failure=stop"):
        check_replies(dict(cfg, on_client_failure="stop"), 1, "train", msgs, [ok])
    err = Message(Error(code=0, reason="disk on fire"), reply_to=msgs[1])
    with pytest.raises(RoundFailure, match="disk on fire"):
        check_replies(dict(cfg, on_client_failure="stop"), 2, "evaluate", msgs, [ok, err])
    check_replies(cfg, 1, "train", msgs, [ok, Message(RD(), reply_to=msgs[1])])  # all answered


def test_superlinks_own_error_reply_counts_once(identity):
    """A SuperLink answers for a dead node ("node unavailable") from its own node id:
    paired by message id, that is one failed node, not a failure plus a missing reply."""
    from flwr.app import Error, Message, RecordDict as RD

    msgs = [Message(RD(), dst_node_id=n, message_type="train") for n in (11, 12)]
    for m in msgs:  # what a grid's push does
        m.metadata.__dict__["_message_id"] = m.object_id
    ok = Message(RD(), reply_to=msgs[0])
    gone = Message(Error(code=0, reason="Node Unavailable"), reply_to=msgs[1])
    gone.metadata.__dict__["_src_node_id"] = 1
    with pytest.raises(RoundFailure, match=r"1 of 2 node\(s\).*\(node 12: .*Node Unavailable"):
        check_replies({"on_client_failure": "stop", "round_timeout": 5}, 2, "train", msgs, [ok, gone])


def test_bad_override_in_the_run_config_is_one_line(tmp_path, caplog):
    rc = {"output-dir": str(tmp_path / "r"), "overrides": "num_rounds=zero"}
    with pytest.raises(deployed.RoundStopped, match=r"run config: num_rounds='zero': expected an integer"):
        deployed.serve(None, ctx(run_config=rc), lambda *a: pytest.fail("no round may run"))
    assert not (tmp_path / "r").exists()


def test_bad_policy_is_a_config_error():
    with pytest.raises(ConfigError, match="on_client_failure=maybe: expected one of"):
        compose(["on_client_failure=maybe"])


def test_test_certificates(tmp_path):
    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.serialization import load_ssh_private_key, load_ssh_public_key

    from fedmtl.deploy.certs import generate

    paths = generate(tmp_path, sans=["superlink", "10.1.2.3"], supernodes=2)
    ca = x509.load_pem_x509_certificate(paths["ca_cert"].read_bytes())
    srv = x509.load_pem_x509_certificate(paths["server_cert"].read_bytes())
    srv.verify_directly_issued_by(ca)
    san = srv.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"localhost", "superlink"} <= set(san.get_values_for_type(x509.DNSName))
    assert {"127.0.0.1", "10.1.2.3"} <= {str(a) for a in san.get_values_for_type(x509.IPAddress)}
    for k in range(2):
        key = load_ssh_private_key(paths[f"supernode-{k}"].read_bytes(), None)
        pub = load_ssh_public_key(paths[f"supernode-{k}.pub"].read_bytes())
        assert isinstance(key.curve, ec.SECP384R1)
        assert key.public_key().public_numbers() == pub.public_numbers()
        assert paths[f"supernode-{k}"].stat().st_mode & 0o077 == 0
