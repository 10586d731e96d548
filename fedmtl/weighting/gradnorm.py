"""GradNorm (Chen et al., ICML 2018): learned task weights that balance the
tasks' gradient norms on the shared parameters.

With weights w_t (here T * softmax(logits), so they stay positive and sum to T),
G_t = ||grad_shared(w_t L_t)|| and r_t = (L_t / L_t(0)) / mean_k(L_k / L_k(0)),
the weights follow the gradient of

    sum_t | G_t - mean_k(G_k) * r_t^alpha |      (the target held constant)

so a task whose weighted gradient is larger than its target loses weight; alpha
sets how strongly a task that trains slower is favoured. The model gets
sum_t w_t L_t. L_t(0) is the client's first loss, kept in its state.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import Weighting
from .gradients import add_to_grads, backward_per_task


class GradNorm(Weighting):
    def __init__(self, tasks, alpha: float = 1.5):
        super().__init__(tasks)
        self.alpha = float(alpha)
        self.logits = nn.Parameter(torch.zeros(len(self.tasks)))
        self.register_buffer("initial_losses", torch.zeros(len(self.tasks)))  # 0: not seen yet

    def task_weights(self) -> torch.Tensor:
        return len(self.tasks) * torch.softmax(self.logits, dim=0)

    def backward(self, losses, shared_params):
        w = self.task_weights()
        wd = w.detach()
        device = losses[self.tasks[0]].device
        if not shared_params:  # nothing shared is trained (FedRep's head phase): plain weighted sum
            return self.weighted_backward(losses, wd.to(device))
        grads = backward_per_task([wd[k].to(device) * losses[t] for k, t in enumerate(self.tasks)], shared_params)
        add_to_grads(shared_params, grads.sum(0))

        loss_now = torch.stack([losses[t].detach() for t in self.tasks]).float().cpu()
        unseen = self.initial_losses <= 0
        self.initial_losses[unseen] = loss_now[unseen]
        rate = loss_now / self.initial_losses.clamp_min(1e-12)
        r = rate / rate.mean().clamp_min(1e-12)
        norms = grads.norm(dim=1).cpu() / wd  # ||grad_shared L_t||
        G = w * norms  # differentiable in the logits only
        target = (G.mean() * r.pow(self.alpha)).detach()
        (g_logits,) = torch.autograd.grad((G - target).abs().sum(), self.logits)
        self.logits.grad = g_logits if self.logits.grad is None else self.logits.grad + g_logits
        return {t: float(wd[k]) for k, t in enumerate(self.tasks)}
