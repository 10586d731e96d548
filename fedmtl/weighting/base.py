"""One interface for task weighting; a new method is one file plus one registry line."""

from __future__ import annotations

import torch
from torch import nn


class Weighting(nn.Module):
    """Turns per-task losses into gradients on the model.

    `backward` computes and accumulates the gradients of every trainable parameter
    (methods that manipulate per-task gradients, like PCGrad, need to), and returns
    the weight it gave each task so it can be logged. Learnable weighting state
    (e.g. uncertainty's log-variances) is a parameter of this module, other state
    (e.g. DWA's loss history) a persistent buffer; both are personal to the client
    and kept across rounds in its state.
    """

    def __init__(self, tasks: list[str]):
        super().__init__()
        self.tasks = list(tasks)

    def backward(self, losses: dict[str, torch.Tensor], shared_params: list[torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        """Called after each local epoch with the epoch's mean losses (DWA uses it)."""

    def weighted_backward(self, losses: dict[str, torch.Tensor], weights) -> dict[str, float]:
        """Backward of sum_t weights[t] * losses[t]; `weights` is a dict or a tensor in task order."""
        w = [weights[t] for t in self.tasks] if isinstance(weights, dict) else list(weights)
        sum(w[k] * losses[t] for k, t in enumerate(self.tasks)).backward()
        return {t: float(w[k]) for k, t in enumerate(self.tasks)}
