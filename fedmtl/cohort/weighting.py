"""A chunk's task weighting, every client's at once: fixed, uncertainty and DWA, with the maths
of fedmtl/weighting/ and each client's own state (`ChunkWeighting`). Weightings that work on
per-task gradients (GradNorm, PCGrad) are not batched (training.unbatched).
"""

from __future__ import annotations

import numpy as np
import torch

from ..client_step import WEIGHTING, RunSetup, weighting_state
from ..weighting import build_weighting
from .chunk import Chunk

BATCHED = ("fixed", "uncertainty", "dwa")
LOG_VARS = "weighting.log_vars"  # uncertainty's learned log-variances [C, T], trained as a personal parameter


class ChunkWeighting:
    """The task weights of a chunk's clients [C, T] and the weighted loss of a step.

    fixed: the configured weights. uncertainty (Kendall et al.): sum_t exp(-s_t) L_t + s_t with
    each client's s [T] a parameter of the chunk (`LOG_VARS`: Adam with the personal parameters,
    as local_train puts the weighting's parameters in the personal group). DWA (Liu et al.): each
    client's weights from its own loss history, fixed within an epoch and updated at its end."""

    def __init__(self, setup: RunSetup, chunk: Chunk):
        cfg = setup.cfg
        self.tasks, self.name = list(cfg["tasks"]), cfg["weighting"]["name"]
        proto = build_weighting(cfg["weighting"], self.tasks)
        default = weighting_state(proto)
        states = [c.job.state.get(WEIGHTING) or default for c in chunk.clients]
        dev = chunk.rows.device
        self.chunk = chunk
        if self.name == "fixed":
            self.fixed = torch.tensor([proto.weights[t] for t in self.tasks], dtype=torch.float64)
        elif self.name == "uncertainty":  # a parameter of the chunk: the optimiser's personal Adam takes it
            s = torch.stack([torch.as_tensor(st["log_vars"], dtype=torch.float32) for st in states]).to(dev)
            chunk.P[LOG_VARS] = s.contiguous().requires_grad_(True)
            chunk.names.append(LOG_VARS)
        elif self.name == "dwa":
            self.temperature = proto.temperature
            self.history = torch.stack([torch.as_tensor(st["history"], dtype=torch.float32) for st in states])
            self.seen = torch.as_tensor([int(st["epochs_seen"]) for st in states], dtype=torch.long)
        else:
            raise ValueError(f"weighting={self.name}: not batched (cohort.training.unbatched)")
        self.epoch_w = None

    def start_epoch(self) -> None:
        """DWA: every client's weights for this epoch (weighting.dwa.DWA.task_weights)."""
        if self.name == "dwa":
            ratio = self.history[:, 1] / self.history[:, 0].clamp_min(1e-12)
            w = len(self.tasks) * torch.softmax(ratio / self.temperature, dim=1)
            self.epoch_w = torch.where((self.seen < 2).unsqueeze(1), torch.ones_like(w), w)

    def total(self, ls: dict[str, torch.Tensor]) -> tuple[torch.Tensor, np.ndarray]:
        """(the weighted loss of each client [C], the weight each task had [C, T] for the logs)."""
        if self.name == "uncertainty":
            s = self.chunk.P[LOG_VARS]
            total = sum(torch.exp(-s[:, k]) * ls[t] + s[:, k] for k, t in enumerate(self.tasks))
            return total, torch.exp(-s.detach()).cpu().numpy().astype(np.float64)
        if self.name == "fixed":  # Python floats times the losses, as Fixed.backward's weighted_backward
            w = [float(v) for v in self.fixed]
            return (sum(w[k] * ls[t] for k, t in enumerate(self.tasks)),
                    np.broadcast_to(np.array(w), (len(self.chunk.clients), len(w))))
        wd = self.epoch_w.to(ls[self.tasks[0]].device)
        return sum(wd[:, k] * ls[t] for k, t in enumerate(self.tasks)), self.epoch_w.numpy().astype(np.float64)

    def end_epoch(self, means: np.ndarray) -> None:
        """DWA: each client's epoch mean losses [C, T] into its history (DWA.end_epoch)."""
        if self.name == "dwa":
            self.history = torch.stack([self.history[:, 1], torch.as_tensor(means, dtype=torch.float32)], 1)
            self.seen = self.seen + 1

    def state(self, k: int) -> dict[str, np.ndarray] | None:
        """Client k's weighting state after the round (client_step.weighting_state's arrays; None: fixed)."""
        if self.name == "uncertainty":
            return {"log_vars": self.chunk.P[LOG_VARS][k].detach().cpu().numpy().copy()}
        if self.name == "dwa":
            return {"history": self.history[k].numpy().copy(), "epochs_seen": np.array(int(self.seen[k]))}
        return None
