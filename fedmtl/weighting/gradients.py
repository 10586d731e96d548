"""Per-task gradients on the shared parameters, for the gradient-based weightings
(PCGrad, GradNorm). The shared parameters' gradients are flattened into one row
per task so that methods can combine them with plain vector algebra."""

from __future__ import annotations

import torch


def backward_per_task(losses: list[torch.Tensor], shared: list[torch.Tensor]) -> torch.Tensor:
    """Backpropagate each loss on its own and return its gradient on `shared`, one
    flat row per loss ([len(losses), sum of numel]).

    Every other parameter accumulates the sum of the losses' gradients, exactly as
    one backward of their sum would; the `.grad` of `shared` is left as it was on
    entry, for the caller to add the combined gradient with `add_to_grads`.
    """
    entry = [p.grad for p in shared]
    rows = []
    for k, loss in enumerate(losses):
        for p in shared:
            p.grad = None
        loss.backward(retain_graph=k < len(losses) - 1)
        rows.append(flatten([p.grad for p in shared], shared))
    for p, g in zip(shared, entry):
        p.grad = g
    return torch.stack(rows)


def flatten(grads: list[torch.Tensor | None], params: list[torch.Tensor]) -> torch.Tensor:
    """One vector of `grads` (a parameter a loss does not reach contributes zeros)."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def add_to_grads(shared: list[torch.Tensor], flat: torch.Tensor) -> None:
    """Add the flat gradient `flat` to the `.grad` of `shared` (the inverse of `flatten`)."""
    offset = 0
    for p in shared:
        g = flat[offset:offset + p.numel()].view_as(p)
        p.grad = g.clone() if p.grad is None else p.grad + g
        offset += p.numel()
