"""A toy two-level model (a shared layer under per-task heads) for the weighting tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn


class Toy(nn.Module):
    """Shared linear layer + one personal head per task; losses are MSE to per-task targets."""

    def __init__(self, tasks, dim=4, seed=0):
        super().__init__()
        self.tasks = list(tasks)
        with torch.random.fork_rng():  # the same weights every time, the global RNG untouched
            torch.manual_seed(seed)
            self.shared = nn.Linear(dim, dim)
            self.heads = nn.ModuleDict({t: nn.Linear(dim, 1) for t in self.tasks})

    def losses(self, x, targets):
        h = torch.relu(self.shared(x))
        return {t: (self.heads[t](h).squeeze(-1) - targets[t]).pow(2).mean() for t in self.tasks}


@pytest.fixture
def toy_batch():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 4, generator=g)
    targets = {"rating": x.sum(-1), "click": x[:, 0] - x[:, 1], "like": x[:, 2]}
    return x, targets


@pytest.fixture
def toy():
    """Factory: toy(tasks) -> a fresh `Toy` (the same initial weights every call)."""
    return Toy
