"""train._optimizer's SGD and Adam steps on a chunk's stacked parameters, written out as
torch's (foreach) optimisers take them, each client with its own Adam step count (`Optim`).
"""

from __future__ import annotations

import torch

from .chunk import Chunk

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as train._optimizer uses them


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *[1] * (like.dim() - 1))


class Optim:
    """train._optimizer's steps on stacked parameters: SGD or Adam on the shared ones, Adam
    on the personal ones, each client with its own step count."""

    def __init__(self, chunk: Chunk, tcfg):
        self.chunk, self.tcfg = chunk, tcfg
        self.lr = tcfg.lr
        self.lr_shared = tcfg.shared_lr if tcfg.shared_lr is not None else tcfg.lr
        C = len(chunk.clients)
        self.steps = torch.zeros(C, dtype=torch.float64)
        self.adam = {n for n in chunk.names if not (n in chunk.shared_names and tcfg.optimizer == "sgd")}
        self.m = {n: torch.zeros_like(chunk.P[n]) for n in self.adam}
        self.decay = {n: tcfg.personal_decay for n in self.adam if n not in chunk.shared_names and tcfg.personal_decay}
        self.v = {n: torch.zeros_like(chunk.P[n]) for n in self.adam}

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One step of the clients where `active` (bool [C], on the chunk's device)."""
        P = self.chunk.P
        act_cpu = active.cpu()
        every = bool(act_cpu.all())  # every client steps (most steps of a chunk sorted by size): no masking
        self.steps += act_cpu.double()
        b1, b2 = ADAM_BETAS
        st = self.steps.clamp(min=1.0)
        bc1 = 1 - b1 ** st
        bc2_sqrt = (1 - b2 ** st).sqrt()
        dev = active.device
        lr_of = {n: (self.lr_shared if n in self.chunk.shared_names else self.lr) for n in self.adam}
        for n, p in P.items():
            g = p.grad
            if g is None:
                continue
            if n not in self.adam:  # torch.optim.SGD: p - lr * g (g is 0 where inactive)
                p.add_(g, alpha=-self.lr_shared)
                continue
            m, v = self.m[n], self.v[n]
            if n in self.decay:  # train.personal_decay: torch.optim.Adam's weight_decay, g + decay * p
                g = g.add(p, alpha=self.decay[n])
            step_size = _bcast((-(lr_of[n] / bc1)).to(torch.float32).to(dev), p)
            c2 = _bcast(bc2_sqrt.to(torch.float32).to(dev), p)
            if every:  # the same operations in place: the same floats
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                denom = v.sqrt().div_(c2).add_(ADAM_EPS)
                p.add_((step_size * m).div_(denom))
                continue
            a = _bcast(active, p)
            m_new = m.lerp(g, 1 - b1)
            v_new = v * b2
            v_new.addcmul_(g, g, value=1 - b2)
            denom = v_new.sqrt() / c2 + ADAM_EPS
            p.copy_(torch.where(a, p + step_size * m_new / denom, p))
            m.copy_(torch.where(a, m_new, m))
            v.copy_(torch.where(a, v_new, v))

    def zero_grad(self) -> None:
        for p in self.chunk.P.values():
            p.grad = None
