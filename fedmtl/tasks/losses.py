"""The training losses of a batch, task by task (the kinds in regression.py, binary.py, ranking.py).

A pair task (regression, binary) scores each training pair against its label. A ranking
task (click) treats the pair's item as a positive: softmax over all items (the unseen ones
are the negatives); sampled_softmax: over the client's own items and num_negatives random
others, with the sampling correction; sampled: logistic on num_negatives sampled unseen
items per positive.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import get


def choose_rows(touched: np.ndarray, n_items: int, pad_rows: int, rng: np.random.Generator) -> np.ndarray:
    """A client's item set, sorted: the items it touched and `pad_rows` random others."""
    touched = np.unique(np.asarray(touched, dtype=np.int64))
    if pad_rows <= 0:
        return touched
    free = np.ones(n_items, bool)
    free[touched] = False
    others = np.flatnonzero(free)  # np.setdiff1d(np.arange(n_items), touched), without its sort
    pad = rng.choice(others, size=min(pad_rows, len(others)), replace=False)
    return np.sort(np.concatenate([touched, pad]))


def click_candidates(rows: np.ndarray, touched: np.ndarray, n_items: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(item ids, logit offsets) of the click loss over a row set: own items 0, pads
    log(others / pads), the inverse of their inclusion probability (sampled softmax)."""
    touched = np.unique(touched)
    own = np.isin(rows, touched)
    n_pad = int((~own).sum())
    offset = np.where(own, 0.0, math.log((n_items - len(touched)) / n_pad) if n_pad else 0.0)
    return (torch.as_tensor(rows, dtype=torch.long, device=device),
            torch.as_tensor(offset, dtype=torch.float32, device=device))


def losses(model, users, items, ratings, tasks, click_loss="softmax", num_negatives=20,
           train_mask=None, generator=None, candidates=None) -> dict[str, torch.Tensor]:
    """Mean loss of each task on a batch of (user, item, rating) training pairs.

    candidates: (sorted item ids holding every item of the batch, logit offsets), the
    only items the click loss may touch (exchange=sparse): the softmax runs over them
    with the offsets added (sampled softmax), sampled negatives come from those with a
    non-zero offset (the pads)."""
    ir = model.item_reps()  # all items once: the click softmax needs them anyway
    hidden = getattr(model.encoder, "hidden_items", None)  # new items (transfer): never a negative
    ur = model.user_reps(users, leave_out=items)
    out = {}
    for t, task in enumerate(tasks):
        kind = get(task)
        head = model.personal.heads[task]
        u = ur[t] @ head.proj
        ubias = model.personal.user_bias(users)[:, t] + head.offset
        ibias = model.encoder.item_bias.weight[:, t]
        if kind.pairwise:
            s = (u * ir[t][items]).sum(-1) + ubias + ibias[items]
            out[task] = kind.loss(s, ratings)
        elif click_loss in ("softmax", "sampled_softmax") and candidates is not None:
            ids, offset = candidates
            logits = u @ ir[t][ids].T + ibias[ids] + offset
            if hidden is not None:
                logits = logits.masked_fill(hidden[ids], float("-inf"))
            out[task] = F.cross_entropy(logits, torch.searchsorted(ids, items))
        elif click_loss in ("softmax", "sampled_softmax"):  # no candidates: every item
            logits = u @ ir[t].T + ibias
            if hidden is not None:
                logits = logits.masked_fill(hidden, float("-inf"))
            out[task] = F.cross_entropy(logits, items)
        else:
            if candidates is not None:  # negatives from the pads only (every row touched is sent)
                ids, offset = candidates
                pool = ids[offset != 0] if bool((offset != 0).any()) else ids
                neg = pool[torch.randint(0, len(pool), (len(users), num_negatives), generator=generator,
                                         device=users.device)]
            else:
                neg = torch.randint(0, ir[t].shape[0], (len(users), num_negatives), generator=generator,
                                    device=users.device)
            if train_mask is not None and candidates is None:  # resample (once) the negatives the user has seen
                seen = train_mask[users.unsqueeze(1), neg]
                neg = torch.where(seen, torch.randint(0, ir[t].shape[0], neg.shape, generator=generator,
                                                      device=users.device), neg)
            pos = (u * ir[t][items]).sum(-1) + ibias[items]
            negs = (u.unsqueeze(1) * ir[t][neg]).sum(-1) + ibias[neg]
            keep = None if hidden is None else torch.cat([torch.ones_like(pos), (~hidden[neg]).flatten().float()])
            out[task] = F.binary_cross_entropy_with_logits(
                torch.cat([pos, negs.flatten()]),
                torch.cat([torch.ones_like(pos), torch.zeros(negs.numel(), device=pos.device)]),
                weight=keep)
    return out
