"""A chunk's task weighting, every client's at once: fixed, uncertainty, DWA, PCGrad and
GradNorm, with the maths of fedmtl/weighting/ and each client's own state (`ChunkWeighting`).
"""

from __future__ import annotations

import numpy as np
import torch

from ..client_step import WEIGHTING, RunSetup, weighting_state
from ..weighting import build_weighting
from .chunk import Chunk

BATCHED = ("fixed", "uncertainty", "dwa", "pcgrad", "gradnorm")
LOG_VARS = "weighting.log_vars"  # uncertainty's learned log-variances [C, T], trained as a personal parameter
LOGITS = "weighting.logits"  # GradNorm's weight logits [C, T], likewise
PARAMS = (LOG_VARS, LOGITS)


class ChunkWeighting:
    """The task weights of a chunk's clients [C, T] and the weighted loss of a step.

    fixed: the configured weights. uncertainty (Kendall et al.): sum_t exp(-s_t) L_t + s_t with
    each client's s [T] a parameter of the chunk (`LOG_VARS`: Adam with the personal parameters,
    as local_train puts the weighting's parameters in the personal group). DWA (Liu et al.): each
    client's weights from its own loss history, fixed within an epoch and updated at its end.
    PCGrad and GradNorm: each client's per-task gradients on its shared parameters (`_task_grads`),
    projected (PCGrad) or their norms driving its own weight logits (GradNorm, `LOGITS`)."""

    def __init__(self, setup: RunSetup, chunk: Chunk):
        cfg = setup.cfg
        self.tasks, self.name = list(cfg["tasks"]), cfg["weighting"]["name"]
        proto = build_weighting(cfg["weighting"], self.tasks)
        default = weighting_state(proto)
        states = [c.job.state.get(WEIGHTING) or default for c in chunk.clients]
        dev = chunk.rows.device
        self.chunk = chunk
        if self.name == "fixed":
            self.fixed = [float(proto.weights[t]) for t in self.tasks]
        elif self.name == "uncertainty":  # a parameter of the chunk: the optimiser's personal Adam takes it
            s = torch.stack([torch.as_tensor(st["log_vars"], dtype=torch.float32) for st in states]).to(dev)
            chunk.P[LOG_VARS] = s.contiguous().requires_grad_(True)
            chunk.names.append(LOG_VARS)
        elif self.name == "gradnorm":  # its logits a parameter like uncertainty's; first losses a buffer
            self.alpha = proto.alpha
            lg = torch.stack([torch.as_tensor(st["logits"], dtype=torch.float32) for st in states]).to(dev)
            chunk.P[LOGITS] = lg.contiguous().requires_grad_(True)
            chunk.names.append(LOGITS)
            self.initial = torch.stack([torch.as_tensor(st["initial_losses"], dtype=torch.float32) for st in states])
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

    def backward(self, ls: dict[str, torch.Tensor], reg: torch.Tensor, active: np.ndarray,
                 trains_shared: bool = True) -> np.ndarray:
        """Every client's gradients of its weighted loss plus `reg` into the chunk's `.grad`s, as
        each client's Weighting.backward and local_train's reg.backward give them; returns the
        weight each task had [C, T] (for the logs). `active` [C]: the clients this step trains;
        trains_shared=False (FedRep's head phase): no shared parameter trains, so PCGrad and
        GradNorm take their plain weighted sum, as they do without shared parameters."""
        if self.name == "pcgrad" and len(self.tasks) > 1 and trains_shared:
            self._pcgrad(ls, reg, active)
            return np.ones((len(self.chunk.clients), len(self.tasks)))
        if self.name == "gradnorm" and trains_shared:
            return self._gradnorm(ls, reg, active)
        if self.name == "uncertainty":
            s = self.chunk.P[LOG_VARS]
            total = sum(torch.exp(-s[:, k]) * ls[t] + s[:, k] for k, t in enumerate(self.tasks))
            w = torch.exp(-s.detach()).cpu().numpy().astype(np.float64)
        elif self.name in ("dwa", "gradnorm"):  # per-client weights held constant in the step (GradNorm: head phase)
            wd = (self.epoch_w if self.name == "dwa" else
                  len(self.tasks) * torch.softmax(self.chunk.P[LOGITS].detach(), dim=1)).to(ls[self.tasks[0]].device)
            total = sum(wd[:, k] * ls[t] for k, t in enumerate(self.tasks))
            w = wd.cpu().numpy().astype(np.float64)
        else:  # fixed (and PCGrad of one task or without shared parameters): Python floats times the losses
            ws = self.fixed if self.name == "fixed" else [1.0] * len(self.tasks)
            total = sum(ws[k] * ls[t] for k, t in enumerate(self.tasks))
            w = np.broadcast_to(np.array(ws), (len(self.chunk.clients), len(ws)))
        (total + reg).sum().backward()
        return w

    def _pcgrad(self, ls: dict[str, torch.Tensor], reg: torch.Tensor, active: np.ndarray) -> None:
        """weighting.pcgrad on every client: its per-task gradients on the shared parameters,
        each projected against the others in its own k-th step's random orders, summed; the
        personal parameters get the plain sum; the regulariser's gradient is added to both."""
        T = len(self.tasks)
        grads, G = self._task_grads([ls[t] for t in self.tasks])
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
        self._set_grads(grads, out.sum(1), reg)
        self.steps += active

    def _gradnorm(self, ls: dict[str, torch.Tensor], reg: torch.Tensor, active: np.ndarray) -> np.ndarray:
        """weighting.gradnorm on every client: the model gets sum_t w_t L_t; each client's logits
        get the gradient of sum_t |G_t - mean(G) r_t^alpha| from its own per-task gradient norms on
        the shared parameters, its first losses kept in its state."""
        T = len(self.tasks)
        lg = self.chunk.P[LOGITS]
        w = T * torch.softmax(lg, dim=1)  # [C, T]
        wd = w.detach()
        grads, G = self._task_grads([wd[:, k] * ls[t] for k, t in enumerate(self.tasks)])
        self._set_grads(grads, G.sum(1), reg)
        now = torch.stack([ls[t].detach() for t in self.tasks], 1).float().cpu()  # [C, T]
        act = torch.as_tensor(active).unsqueeze(1)
        unseen = (self.initial <= 0) & act
        self.initial = torch.where(unseen, now, self.initial)
        rate = now / self.initial.clamp_min(1e-12)
        r = rate / rate.mean(1, keepdim=True).clamp_min(1e-12)
        norms = G.norm(dim=2).cpu() / wd.cpu()  # ||grad_shared L_t|| per client
        Gn = w * norms.to(w.device)
        target = (Gn.mean(1, keepdim=True) * r.pow(self.alpha).to(w.device)).detach()
        (g_logits,) = torch.autograd.grad((Gn - target).abs().sum(), lg)
        lg.grad = g_logits if lg.grad is None else lg.grad + g_logits
        return wd.cpu().numpy().astype(np.float64)

    def _task_grads(self, losses: list[torch.Tensor]) -> tuple[dict, torch.Tensor]:
        """({name: each loss's gradient [C, ...]} of every trainable parameter of the chunk, the
        losses' gradients on the shared ones flattened [C, losses, D]) (weighting.gradients)."""
        P, chunk = self.chunk.P, self.chunk
        names = [n for n in chunk.names if P[n].requires_grad and n not in PARAMS]
        params = [P[n] for n in names]
        per = [torch.autograd.grad(loss.sum(), params, retain_graph=True, allow_unused=True) for loss in losses]
        grads = {n: [g[k] if g[k] is not None else torch.zeros_like(P[n]) for g in per] for k, n in enumerate(names)}
        C = len(chunk.clients)
        G = torch.stack([torch.cat([grads[n][t].reshape(C, -1) for n in names if n in chunk.shared_names], 1)
                         for t in range(len(losses))], 1)
        return grads, G

    def _set_grads(self, grads: dict, shared_flat: torch.Tensor, reg: torch.Tensor) -> None:
        """`.grad` of every parameter in `grads`: the shared ones from `shared_flat` [C, D] (in
        `_task_grads`' order), the others the plain sum of the losses' gradients; plus the
        regulariser's gradient on both."""
        P, offset = self.chunk.P, 0
        names = list(grads)
        g_reg = (torch.autograd.grad(reg.sum(), [P[n] for n in names], retain_graph=True, allow_unused=True)
                 if reg.requires_grad else [None] * len(names))
        for k, n in enumerate(names):
            if n in self.chunk.shared_names:
                size = P[n][0].numel()
                grad = shared_flat[:, offset:offset + size].reshape(P[n].shape)
                offset += size
            else:
                grad = sum(grads[n])
            P[n].grad = grad if g_reg[k] is None else grad + g_reg[k]

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
        if self.name == "gradnorm":
            return {"logits": self.chunk.P[LOGITS][k].detach().cpu().numpy().copy(),
                    "initial_losses": self.initial[k].numpy().copy()}
        return None
