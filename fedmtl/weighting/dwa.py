"""Dynamic Weight Average (Liu, Johns & Davison, "End-to-End Multi-Task Learning
with Attention", CVPR 2019).

A task whose loss fell less over the last epoch gets more weight:

    r_t = L_t(e-1) / L_t(e-2)        w_t = T * softmax_t(r_t / temperature)

with L_t(e) the mean loss of task t in local epoch e and T the number of tasks;
every weight is 1 until two epochs have been seen. The loss history is a buffer,
kept in the client's state, so it spans rounds (a client trains only a few local
epochs per round).
"""

from __future__ import annotations

import torch

from .base import Weighting


class DWA(Weighting):
    def __init__(self, tasks, temperature: float = 2.0):
        super().__init__(tasks)
        self.temperature = float(temperature)
        self.register_buffer("history", torch.zeros(2, len(self.tasks)))  # epoch e-2, e-1
        self.register_buffer("epochs_seen", torch.zeros((), dtype=torch.long))

    def task_weights(self) -> torch.Tensor:
        if int(self.epochs_seen) < 2:
            return torch.ones(len(self.tasks))
        ratio = self.history[1] / self.history[0].clamp_min(1e-12)
        return len(self.tasks) * torch.softmax(ratio / self.temperature, dim=0)

    def backward(self, losses, shared_params):
        return self.weighted_backward(losses, self.task_weights())

    def end_epoch(self, mean_losses):
        self.history[0] = self.history[1]
        self.history[1] = torch.tensor([float(mean_losses[t]) for t in self.tasks])
        self.epochs_seen += 1
