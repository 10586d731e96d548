"""One interface for task weighting; a new method is one file plus one registry line."""

from __future__ import annotations

import torch
from torch import nn


class Weighting(nn.Module):
    """Turns per-task losses into gradients on the model.

    `backward` computes and accumulates the gradients (methods that manipulate
    per-task gradients, like PCGrad, need to), and returns the weight it gave each
    task so it can be logged. Learnable weighting state (e.g. uncertainty's
    log-variances) is a parameter of this module; it is personal to the client.
    """

    def __init__(self, tasks: list[str], **_):
        super().__init__()
        self.tasks = list(tasks)

    def backward(self, losses: dict[str, torch.Tensor], shared_params: list[torch.Tensor]) -> dict[str, float]:
        raise NotImplementedError

    def end_epoch(self, mean_losses: dict[str, float]) -> None:
        """Called after each local epoch with the epoch's mean losses (DWA uses it)."""
