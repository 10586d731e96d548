"""Item-item click scores (EASE, Steck 2019) blended into the click ranking.

The click head ranks items by a softmax over the user's embedding; a closed-form
item-item model ranks them by the items the user already has. The two err differently,
and a blend of the two ranks better than either (docs/quality.md, seventh round).

    G = sum over users of x_u x_u^T     (x_u: the 0/1 vector of the user's train items)
    B = argmin ||X - X B||^2 + lam ||B||^2  subject to diag(B) = 0
      = -P / diag(P) with P = (G + lam I)^-1, diagonal set to 0
    score_u = (1 - w) z(click logits of u) + w z(x_u B)

`z` standardises one user's scores over their candidate items (the items not in their
train part, the ones ranked). G is a sum of per-user parts, so it federates as a sum:
each client computes its users' part (`gram_part`), the server adds the parts
(`add_part`), solves for B (`ease`) and sends B with the evaluation messages; each
client then scores its own users (`blend`). Centralised and local-only runs build G
from the data they train on (`gram`), so the three settings share this code.

Everything here is plain numpy and torch (no Flower): fedmtl's core.
"""

from __future__ import annotations

import numpy as np
import torch


def active(cfg: dict) -> bool:
    """Whether a run blends item-item scores into click (click_mix.weight > 0 and a click task)."""
    mix = cfg.get("click_mix") or {}
    return float(mix.get("weight", 0.0)) > 0 and "click" in cfg["tasks"]


def gram_part(train_mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(items, block): the items these users have in train and their co-occurrence counts
    (block[a, b] = how many of the users have both items[a] and items[b])."""
    x = train_mask.to("cpu", torch.float32)
    items = torch.nonzero(x.any(dim=0)).flatten()
    xs = x[:, items]
    return items.numpy().astype(np.int64), (xs.T @ xs).numpy()


def add_part(gram: np.ndarray, items: np.ndarray, block: np.ndarray) -> None:
    """Add one part (from `gram_part`) into the full n_items x n_items Gram matrix, in place."""
    items = np.asarray(items, dtype=np.int64)
    block = np.asarray(block, dtype=gram.dtype)
    if items.ndim != 1 or block.shape != (len(items), len(items)):
        raise ValueError(f"a Gram part needs items (k,) and block (k, k), got {items.shape} and {block.shape}")
    if len(items) and (items.min() < 0 or items.max() >= gram.shape[0]):
        raise ValueError(f"a Gram part names item {int(items.max())}, outside 0..{gram.shape[0] - 1}")
    gram[np.ix_(items, items)] += block


def gram(train_mask: torch.Tensor) -> np.ndarray:
    """The Gram matrix of these users alone (centralised: all of them; local-only: one client's)."""
    n = train_mask.shape[1]
    g = np.zeros((n, n), dtype=np.float64)
    add_part(g, *gram_part(train_mask))
    return g


def ease_of_part(items: np.ndarray, block: np.ndarray, n_items: int, lam: float) -> np.ndarray:
    """`ease` of the Gram matrix that is `block` on items x items and 0 elsewhere, solved on the
    block alone: G + lam I is block-diagonal there, so B is 0 outside the block. One user's
    B (local-only) costs a k x k solve instead of an n_items x n_items one."""
    b = np.zeros((n_items, n_items), dtype=np.float32)
    b[np.ix_(items, items)] = ease(block, lam)
    return b


def ease(gram_matrix: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item weights B from the Gram matrix (float32, zero diagonal)."""
    if lam <= 0:
        raise ValueError(f"click_mix.lam must be > 0, got {lam}")
    g = np.array(gram_matrix, dtype=np.float64)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def standardise(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's scores minus its mean, over its std, both taken over the unmasked items
    (masked items: 0). Rows with no spread come out 0."""
    keep = (~mask).to(scores.dtype)
    n = keep.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (scores * keep).sum(dim=1, keepdim=True) / n
    var = (((scores - mean) * keep) ** 2).sum(dim=1, keepdim=True) / n
    return (scores - mean) / var.sqrt().clamp_min(1e-12) * keep


def blend(scores: torch.Tensor, mask: torch.Tensor, b: torch.Tensor, weight: float) -> torch.Tensor:
    """Click scores blended with item-item scores: (1 - w) z(scores) + w z(x B), x = mask."""
    item_item = mask.to(b.dtype) @ b
    return (1.0 - weight) * standardise(scores.to(b.dtype), mask) + weight * standardise(item_item, mask)


def pooled(cfg: dict, train_mask: torch.Tensor):
    """(B, weight) from these users' own Gram matrix (centralised or local-only runs), or None
    when the run blends nothing."""
    if not active(cfg):
        return None
    b = ease_of_part(*gram_part(train_mask), train_mask.shape[1], float(cfg["click_mix"]["lam"]))
    return torch.from_numpy(b).to(train_mask.device), float(cfg["click_mix"]["weight"])
