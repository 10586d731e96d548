"""PCGrad (Yu et al., "Gradient Surgery for Multi-Task Learning", NeurIPS 2020).

On the shared parameters, each task's gradient g_i is projected, against the
other tasks in random order, onto the normal plane of every g_j it conflicts
with (g_i . g_j < 0):  g_i <- g_i - (g_i . g_j / ||g_j||^2) g_j. The shared
parameters get the sum of the projected gradients; the personal ones (heads,
user embeddings) the plain sum of the task gradients. Every task weight is 1.
"""

from __future__ import annotations

import torch

from .base import Weighting
from .gradients import add_to_grads, backward_per_task


def project_conflicts(grads: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """PCGrad's surgery on [tasks, dims] gradients; returns the projected rows."""
    out = grads.clone()
    n = grads.shape[0]
    for i in range(n):
        for j in torch.randperm(n, generator=generator).tolist():
            if j == i:
                continue
            dot = out[i] @ grads[j]
            if dot < 0:
                out[i] -= dot / grads[j].pow(2).sum().clamp_min(1e-20) * grads[j]
    return out


class PCGrad(Weighting):
    def __init__(self, tasks, seed: int = 0):
        super().__init__(tasks)
        self.generator = torch.Generator().manual_seed(int(seed))

    def backward(self, losses, shared_params):
        if not shared_params or len(self.tasks) == 1:
            return self.weighted_backward(losses, [1.0] * len(self.tasks))
        grads = backward_per_task([losses[t] for t in self.tasks], shared_params)
        add_to_grads(shared_params, project_conflicts(grads, self.generator).sum(0))
        return {t: 1.0 for t in self.tasks}
