"""New items on every mode's main path: a client scores them through their features alone
(zero id embedding, mean item bias), keeps them out of training, and reports its test
metrics on the new-item and the known-item rows separately."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch

from ..config_types import RunConfig
from ..tasks import get as get_task


def new_item_view(model, items: np.ndarray | None, hide: bool = True) -> None:
    """Score `items` through their features alone (zero id embedding, mean item bias) and,
    with `hide`, keep them out of training (never a click negative). None clears it."""
    enc = model.encoder
    if items is None or len(items) == 0:
        enc.hidden_items = None
        return
    dev = enc.item_emb.weight.device
    mask = torch.zeros(enc.item_emb.num_embeddings, dtype=torch.bool, device=dev)
    mask[torch.as_tensor(items, device=dev)] = True
    enc.hidden_items = mask if hide else None
    with torch.no_grad():
        enc.item_emb.weight[mask] = 0.0
        enc.item_bias.weight[mask] = enc.item_bias.weight[~mask].mean(0)


def hidden_items(cfg: RunConfig) -> np.ndarray:
    """The run's new items (empty, without touching the data, when transfer.new_items=0)."""
    if not cfg["transfer"]["new_items"]:
        return np.empty(0, np.int64)
    from ..data import federation_for
    return federation_for(cfg).holdout.items


def client_view(model, cfg: RunConfig) -> None:
    """What a client applies after loading the server's arrays (a no-op without new items)."""
    new_item_view(model, hidden_items(cfg))


def item_parts(model, data, tasks, items: np.ndarray) -> dict:
    """Metric parts of the new-item and of the known-item test rows, each ranked among all items."""
    from ..train import evaluate
    if len(items) == 0:
        return {}
    new = torch.as_tensor(np.isin(data.test_i.cpu().numpy(), items), device=data.test_i.device)
    out = {}
    for prefix, sel in (("new_items", new), ("known_items", ~new)):
        sub = replace(data, test_u=data.test_u[sel], test_i=data.test_i[sel], test_r=data.test_r[sel])
        # Every client sends the same keys (Flower aggregates only uniform records): a client
        # without such rows sends zero counts.
        part = {k: v for t in tasks for k, v in get_task(t).empty_parts().items()} | evaluate(model, sub, tasks)
        out.update({f"{prefix}/{k}": v for k, v in part.items()})
    return out
