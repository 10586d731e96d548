"""Bottom networks (the architecture knob): each maps a tower's input to one
representation per task. Every tower lives in the encoder, so it is shared."""

from __future__ import annotations

import torch
from torch import nn


def mlp(dim: int, hidden: int, layers: int, dropout: float) -> nn.Sequential:
    mods: list[nn.Module] = []
    width = dim
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout)]
        width = hidden
    mods.append(nn.Linear(width, dim))
    return nn.Sequential(*mods)


class SharedBottom(nn.Module):
    """One residual MLP shared by all tasks: x + f(x), the same for every task."""

    def __init__(self, dim: int, n_tasks: int, hidden: int = 64, layers: int = 1, dropout: float = 0.0, **_):
        super().__init__()
        self.n_tasks = n_tasks
        self.net = mlp(dim, hidden, layers, dropout)
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = x + self.net(x)
        return [h] * self.n_tasks


class MMoE(nn.Module):
    """Multi-gate mixture of experts (Ma et al. 2018): shared experts, one softmax gate per task."""

    def __init__(self, dim: int, n_tasks: int, hidden: int = 64, layers: int = 1, dropout: float = 0.0,
                 num_experts: int = 4, **_):
        super().__init__()
        self.experts = nn.ModuleList(mlp(dim, hidden, layers, dropout) for _ in range(num_experts))
        self.gates = nn.ModuleList(nn.Linear(dim, num_experts) for _ in range(n_tasks))
        for e in self.experts:
            nn.init.zeros_(e[-1].weight)
            nn.init.zeros_(e[-1].bias)

    def gate_weights(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [torch.softmax(g(x), dim=-1) for g in self.gates]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        e = torch.stack([ex(x) for ex in self.experts], dim=-2)  # [..., E, dim]
        return [x + (w.unsqueeze(-1) * e).sum(-2) for w in self.gate_weights(x)]


class PLE(nn.Module):
    """Progressive layered extraction (Tang et al. 2020): shared and task-specific
    experts per level; each task's gate mixes its own and the shared experts, a
    shared gate feeds the next level."""

    def __init__(self, dim: int, n_tasks: int, hidden: int = 64, layers: int = 1, dropout: float = 0.0,
                 num_experts: int = 2, num_levels: int = 2, **_):
        super().__init__()
        self.n_tasks, self.num_levels = n_tasks, num_levels
        k = num_experts
        self.shared = nn.ModuleList(nn.ModuleList(mlp(dim, hidden, layers, dropout) for _ in range(k))
                                    for _ in range(num_levels))
        self.specific = nn.ModuleList(
            nn.ModuleList(nn.ModuleList(mlp(dim, hidden, layers, dropout) for _ in range(k)) for _ in range(n_tasks))
            for _ in range(num_levels))
        self.task_gates = nn.ModuleList(nn.ModuleList(nn.Linear(dim, 2 * k) for _ in range(n_tasks))
                                        for _ in range(num_levels))
        self.shared_gates = nn.ModuleList(nn.Linear(dim, (n_tasks + 1) * k) for _ in range(num_levels))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        task_in = [x] * self.n_tasks
        shared_in = x
        for lv in range(self.num_levels):
            sh = [e(shared_in) for e in self.shared[lv]]
            sp = [[e(task_in[t]) for e in self.specific[lv][t]] for t in range(self.n_tasks)]
            outs = []
            for t in range(self.n_tasks):
                ex = torch.stack(sp[t] + sh, dim=-2)
                w = torch.softmax(self.task_gates[lv][t](task_in[t]), dim=-1).unsqueeze(-1)
                outs.append(task_in[t] + (w * ex).sum(-2))
            all_ex = torch.stack([e for t in range(self.n_tasks) for e in sp[t]] + sh, dim=-2)
            w = torch.softmax(self.shared_gates[lv](shared_in), dim=-1).unsqueeze(-1)
            shared_in = shared_in + (w * all_ex).sum(-2)
            task_in = outs
        return task_in


ARCHITECTURES = {"shared_bottom": SharedBottom, "mmoe": MMoE, "ple": PLE}
