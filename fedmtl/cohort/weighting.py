"""A chunk's task weighting, every client's at once: fixed, uncertainty, DWA and PCGrad, with
the maths of fedmtl/weighting/ and each client's own state (`ChunkWeighting`). GradNorm, which
learns its weights from per-task gradient norms with an optimiser of its own, is not batched
(training.unbatched).
"""

from __future__ import annotations

import numpy as np
import torch

from ..client_step import WEIGHTING, RunSetup, weighting_state
from ..weighting import build_weighting
from .chunk import Chunk

BATCHED = ("fixed", "uncertainty", "dwa", "pcgrad")
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
        elif self.name == "pcgrad":  # every client's generator starts at the seed each round (PCGrad.__init__)
            self.generator, self.orders = proto.generator, []
            self.steps = np.zeros(len(chunk.clients), np.int64)  # each client's steps so far: its k-th uses orders[k]
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

    def backward(self, ls: dict[str, torch.Tensor], reg: torch.Tensor, active: np.ndarray) -> np.ndarray:
        """Every client's gradients of its weighted loss plus `reg` into the chunk's `.grad`s, as
        each client's Weighting.backward and local_train's reg.backward give them; returns the
        weight each task had [C, T] (for the logs). `active` [C]: the clients this step trains."""
        if self.name == "pcgrad" and len(self.tasks) > 1:
            self._pcgrad(ls, reg, active)
            return np.ones((len(self.chunk.clients), len(self.tasks)))
        if self.name == "uncertainty":
            s = self.chunk.P[LOG_VARS]
            total = sum(torch.exp(-s[:, k]) * ls[t] + s[:, k] for k, t in enumerate(self.tasks))
            w = torch.exp(-s.detach()).cpu().numpy().astype(np.float64)
        elif self.name == "dwa":
            wd = self.epoch_w.to(ls[self.tasks[0]].device)
            total = sum(wd[:, k] * ls[t] for k, t in enumerate(self.tasks))
            w = self.epoch_w.numpy().astype(np.float64)
        else:  # fixed (and PCGrad of one task): Python floats times the losses, as weighted_backward
            ws = [float(v) for v in self.fixed] if self.name == "fixed" else [1.0] * len(self.tasks)
            total = sum(ws[k] * ls[t] for k, t in enumerate(self.tasks))
            w = np.broadcast_to(np.array(ws), (len(self.chunk.clients), len(ws)))
        (total + reg).sum().backward()
        return w

    def _pcgrad(self, ls: dict[str, torch.Tensor], reg: torch.Tensor, active: np.ndarray) -> None:
        """weighting.pcgrad on every client: its per-task gradients on the shared parameters,
        each projected against the others in its own k-th step's random orders, summed; the
        personal parameters get the plain sum; the regulariser's gradient is added to both."""
        P, chunk = self.chunk.P, self.chunk
        names = [n for n in chunk.names if P[n].requires_grad]
        shared = [n for n in names if n in chunk.shared_names]
        params = [P[n] for n in names]
        per_task = [torch.autograd.grad(ls[t].sum(), params, retain_graph=True, allow_unused=True) for t in self.tasks]
        g_reg = torch.autograd.grad(reg.sum(), params, allow_unused=True) if reg.requires_grad else [None] * len(names)
        C, T = len(chunk.clients), len(self.tasks)
        zero = lambda n: torch.zeros_like(P[n])  # noqa: E731
        grads = {n: [g[k] if g[k] is not None else zero(n) for g in per_task] for k, n in enumerate(names)}
        G = torch.stack([torch.cat([grads[n][t].reshape(C, -1) for n in shared], 1) for t in range(T)], 1)  # [C, T, D]
        out = G.clone()
        for k in np.unique(self.steps[active]):
            while len(self.orders) <= k:  # PCGrad.project_conflicts draws one order per task, per step
                self.orders.append([torch.randperm(T, generator=self.generator).tolist() for _ in range(T)])
            idx = torch.as_tensor(np.flatnonzero(active & (self.steps == k)), device=G.device)
            g, o = G[idx], out[idx]
            for i in range(T):
                for j in self.orders[k][i]:
                    if j == i:
                        continue
                    dot = (o[:, i] * g[:, j]).sum(-1)
                    coef = torch.where(dot < 0, dot / g[:, j].pow(2).sum(-1).clamp_min(1e-20), torch.zeros_like(dot))
                    o[:, i] -= coef.unsqueeze(1) * g[:, j]
            out[idx] = o
        combined, offset = out.sum(1), 0
        for k, n in enumerate(names):
            if n in chunk.shared_names:
                size = P[n][0].numel()
                grad = combined[:, offset:offset + size].reshape(P[n].shape)
                offset += size
            else:
                grad = sum(grads[n])
            P[n].grad = grad if g_reg[k] is None else grad + g_reg[k]
        self.steps += active

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
