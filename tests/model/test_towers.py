"""model=: the bottom networks each map a tower's input to one representation per
task, with their sizes from conf/model/<name>.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from fedmtl.config import compose
from fedmtl.model.towers import ARCHITECTURES, MMoE, PLE, SharedBottom

CONF = Path(__file__).resolve().parents[2] / "conf" / "model"
DIM, TASKS = 8, 3


def x_batch(n=5, seed=0):
    return torch.randn(n, DIM, generator=torch.Generator().manual_seed(seed))


def randomise(module, seed=1):
    """Move every weight off its (partly zero) initial value, so each path matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    return module


def test_config_names_are_the_architectures():
    assert sorted(p.stem for p in CONF.glob("*.yaml")) == sorted(ARCHITECTURES)
    for name in ARCHITECTURES:
        assert yaml.safe_load((CONF / f"{name}.yaml").read_text())["name"] == name


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_one_representation_per_task(name):
    tower = randomise(ARCHITECTURES[name](dim=DIM, n_tasks=TASKS, hidden=16))
    out = tower(x_batch())
    assert len(out) == TASKS and all(o.shape == (5, DIM) for o in out)


@pytest.mark.parametrize("name", ["shared_bottom", "mmoe"])
def test_residual_towers_start_as_the_identity(name):
    """Their experts' last layers start at zero, so training starts from the embeddings."""
    tower = ARCHITECTURES[name](dim=DIM, n_tasks=TASKS, hidden=16)
    x = x_batch()
    for o in tower(x):
        torch.testing.assert_close(o, x)


def test_shared_bottom_gives_every_task_the_same_representation():
    out = randomise(SharedBottom(dim=DIM, n_tasks=TASKS, hidden=16))(x_batch())
    assert all(o is out[0] for o in out)


def test_mmoe_gates_are_one_softmax_per_task_that_sums_to_one():
    tower = randomise(MMoE(dim=DIM, n_tasks=TASKS, hidden=16, num_experts=4))
    gates = tower.gate_weights(x_batch())
    assert len(gates) == TASKS
    for w in gates:
        assert w.shape == (5, 4) and (w >= 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(5))
    assert not torch.allclose(gates[0], gates[1])  # each task mixes the experts its own way


def test_mmoe_output_is_the_gate_weighted_sum_of_experts():
    tower = randomise(MMoE(dim=DIM, n_tasks=TASKS, hidden=16, num_experts=4))
    x = x_batch()
    experts = torch.stack([e(x) for e in tower.experts], dim=1)  # [B, E, dim]
    for w, o in zip(tower.gate_weights(x), tower(x)):
        torch.testing.assert_close(o, x + (w.unsqueeze(-1) * experts).sum(1))


def test_ple_task_experts_reach_only_their_own_task():
    """One level: changing task 0's own experts changes task 0's output only;
    changing a shared expert changes every task's."""
    tower = randomise(PLE(dim=DIM, n_tasks=TASKS, hidden=16, num_experts=2, num_levels=1))
    x = x_batch()
    before = [o.detach().clone() for o in tower(x)]
    with torch.no_grad():
        tower.specific[0][0][0][-1].bias.add_(1.0)
    after = tower(x)
    assert not torch.allclose(after[0], before[0])
    for t in (1, 2):
        torch.testing.assert_close(after[t], before[t])
    with torch.no_grad():
        tower.shared[0][0][-1].bias.add_(1.0)
    assert all(not torch.allclose(a, b) for a, b in zip(tower(x), after))


@pytest.mark.parametrize("name,overrides,check", [
    ("shared_bottom", ["model.hidden=24", "model.layers=2"],
     lambda t: [m.out_features for m in t.net if isinstance(m, torch.nn.Linear)] == [24, 24, 16]),
    ("mmoe", ["model.num_experts=3"], lambda t: len(t.experts) == 3 and t.gates[0].out_features == 3),
    ("ple", ["model.num_experts=3", "model.num_levels=3"],
     lambda t: len(t.shared) == 3 and len(t.shared[0]) == 3 and len(t.specific[0][0]) == 3),
])
def test_sizes_come_from_the_config(name, overrides, check):
    from fedmtl.data import federation_for
    from fedmtl.model import build_model

    cfg = compose([f"model={name}", "model.dim=16", "dataset.n_users=40", "dataset.n_items=30",
                   "num_clients=4", *overrides])
    fed = federation_for(cfg)
    data = fed.partition_data(0)
    model = build_model(cfg["model"], cfg["tasks"], len(data.users), data.user_cat, fed.meta, seed=0)
    for tower in (model.encoder.user_tower, model.encoder.item_tower):
        assert isinstance(tower, ARCHITECTURES[name]) and check(tower)
    assert model.encoder.item_emb.embedding_dim == 16
