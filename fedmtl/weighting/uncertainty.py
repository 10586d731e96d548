"""Uncertainty weighting (Kendall, Gal & Cipolla, CVPR 2018).

Each task t has a learned log-variance s_t = log sigma_t^2 and the loss is

    sum_t  exp(-s_t) * L_t + s_t

so a task whose loss stays high (a noisier task) gets a larger sigma_t and a
smaller weight exp(-s_t); at the optimum sigma_t^2 = L_t. This is the common
practical form of the paper's objective (its 1/2 factors for regression only
rescale it); at s_t = 0 every weight is 1, as with `fixed`. The log-variances
are parameters of this module, trained with the model and personal to the client.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Weighting


class Uncertainty(Weighting):
    def __init__(self, tasks, init_log_var: float = 0.0):
        super().__init__(tasks)
        self.log_vars = nn.Parameter(torch.full((len(self.tasks),), float(init_log_var)))

    def task_weights(self) -> torch.Tensor:
        return torch.exp(-self.log_vars.detach())

    def backward(self, losses, shared_params):
        device = losses[self.tasks[0]].device
        s = self.log_vars.to(device)
        total = sum(torch.exp(-s[k]) * losses[t] + s[k] for k, t in enumerate(self.tasks))
        w = self.task_weights()
        total.backward()
        return {t: float(w[k]) for k, t in enumerate(self.tasks)}
