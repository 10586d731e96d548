"""A whole run on tiny synthetic data: fedmtl.simulate.run drives the ServerApp and the
ClientApps through the in-process grid, writes the run folder, and learns every task.

Also the privacy promise of the model split: what a client sends never holds its
personal parameters.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from fedmtl.config import compose
from fedmtl.data import federation_for, split as split_mod
from fedmtl.engine.inprocess import InProcessGrid
from fedmtl.metrics import HEADLINE
from fedmtl.simulate import run

TINY = ["backend=inprocess", "dataset.n_users=60", "dataset.n_items=40", "num_clients=6", "num_rounds=4", "device=cpu"]
TASKS = ["rating", "click", "like"]


def assert_beats(trained: dict, untrained: dict, tasks) -> None:
    for task in tasks:
        key, larger_is_better = HEADLINE[task]
        better = trained[key] > untrained[key] if larger_is_better else trained[key] < untrained[key]
        assert better, f"{key}: trained {trained[key]:.4f} vs untrained {untrained[key]:.4f}"


@pytest.fixture(scope="module")
def federated(tmp_path_factory):
    cfg = compose(TINY)
    out = tmp_path_factory.mktemp("federated")
    return cfg, out, run(cfg, out)


def test_a_federated_run_writes_its_run_folder(federated):
    cfg, out, summary = federated
    for name in ("config.json", "split/train.tsv", "split/test.tsv", "metrics.jsonl", "summary.json",
                 "model_shared.pt"):
        assert (out / name).is_file(), name
    assert not list(out.glob("**/.*.tmp"))  # atomic writes leave no temp files behind
    written = json.loads((out / "config.json").read_text())
    assert written["output_dir"] == str(out.resolve())
    assert {k: written[k] for k in cfg} == cfg


def test_metrics_jsonl_has_one_line_per_round_with_every_task(federated):
    cfg, out, _ = federated
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [row["round"] for row in lines] == [1, 2, 3, 4]
    for row in lines:
        assert row["answered"] == row["sampled"] == 6 and row["failed"] == 0
        assert row["bytes_up"] > 0 and row["bytes_down"] > 0
        assert {f"loss.{t}" for t in TASKS} <= set(row["train"])
        assert {HEADLINE[t][0] for t in TASKS} <= set(row["test"])


def test_summary_holds_the_final_metrics(federated):
    _, out, summary = federated
    on_disk = json.loads((out / "summary.json").read_text())
    assert on_disk["mode"] == "federated" and on_disk["num_clients"] == 6 and on_disk["rounds"] == 4
    assert on_disk["metrics"] == pytest.approx(summary["metrics"])
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["test"] == pytest.approx(on_disk["metrics"])
    for task in TASKS:
        assert math.isfinite(on_disk["metrics"][HEADLINE[task][0]])


def test_the_written_split_is_the_run_s_split(federated):
    cfg, out, _ = federated
    fed = federation_for(cfg)
    back = split_mod.read(out / "split", fed.dataset)
    assert back.train.equals(fed.split.train)
    assert len(back.test) <= len(fed.split.test)


def test_the_checkpoint_holds_exactly_the_shared_encoder(federated):
    cfg, out, _ = federated
    state = torch.load(out / "model_shared.pt")
    assert state and all(name.startswith("encoder.") for name in state)
    assert "encoder.item_emb.weight" in state and state["encoder.item_emb.weight"].shape[0] == 40


def test_federated_training_beats_the_untrained_model_on_every_task(federated, untrained_metrics):
    cfg, _, summary = federated
    assert_beats(summary["metrics"], untrained_metrics(cfg), TASKS)


def test_a_run_on_a_given_split_reproduces_the_run(federated, tmp_path):
    cfg, out, summary = federated
    again = run(compose(TINY + [f"split.path={out / 'split'}"]), tmp_path)
    assert (tmp_path / "split" / "train.tsv").read_text() == (out / "split" / "train.tsv").read_text()
    assert (tmp_path / "split" / "test.tsv").read_text() == (out / "split" / "test.tsv").read_text()
    assert again["metrics"] == pytest.approx(summary["metrics"])


@pytest.mark.parametrize("mode, lines", [("centralized", 4), ("local", 1)])
def test_the_baselines_run_and_learn(tmp_path, mode, lines, untrained_metrics):
    cfg = compose(TINY + [f"mode={mode}", "baseline_epochs=4"])
    summary = run(cfg, tmp_path)
    assert summary["mode"] == mode
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == lines and "test" in rows[-1]
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == pytest.approx(summary["metrics"])
    assert_beats(summary["metrics"], untrained_metrics(cfg), TASKS)


# --- what leaves a client ---------------------------------------------------------------------


@pytest.fixture
def replies(monkeypatch):
    """Every reply a client sends through the in-process grid, in order."""
    seen = []
    original = InProcessGrid.send_and_receive

    def recording(self, messages, *, timeout=None):
        out = list(original(self, messages, timeout=timeout))
        seen.extend(out)
        return out

    monkeypatch.setattr(InProcessGrid, "send_and_receive", recording)
    return seen


def sent_names(replies) -> list[set[str]]:
    """The array names of each reply that carries arrays (the train replies)."""
    names = []
    for reply in replies:
        assert not reply.has_error(), reply.error
        for key, record in reply.content.array_records.items():
            names.append(set(record.keys()))
    return names


def test_with_aggregate_encoder_no_personal_parameter_leaves_a_client(tmp_path, replies):
    # exchange=sparse packs its arrays: tests/federation/test_sparse.py unpacks a real upload
    run(compose(TINY + ["num_rounds=2", "aggregate=encoder"]), tmp_path)
    uploads = sent_names(replies)
    assert len(uploads) == 2 * 6  # every client answered every training round
    for names in uploads:
        assert names and not [n for n in names if "personal." in n]
        assert all(n.startswith("encoder.") for n in names)


def test_with_aggregate_all_heads_are_sent_but_user_embeddings_never(tmp_path, replies):
    # exchange=sparse packs its arrays: tests/federation/test_sparse.py unpacks a real upload
    run(compose(TINY + ["num_rounds=2", "aggregate=all"]), tmp_path)
    uploads = sent_names(replies)
    assert len(uploads) == 2 * 6
    for names in uploads:
        assert not [n for n in names if "personal.user_" in n]
        assert {f"personal.heads.{t}.proj" for t in TASKS} <= names


def test_evaluation_replies_carry_only_metric_parts(tmp_path, replies):
    run(compose(TINY + ["num_rounds=1"]), tmp_path)
    evaluations = [r for r in replies if not r.content.array_records]
    assert len(evaluations) == 6
    for reply in evaluations:
        assert set(reply.content.keys()) == {"metrics"}
