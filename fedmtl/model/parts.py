"""The one place that says which parameters are shared and which are personal.

Rule, for every architecture: everything under `encoder.` is shared. With
`aggregate=all` the task heads are shared too; the users' own embeddings and
biases (`personal.user_*`) are personal in every mode and never leave a client.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

AGGREGATE_MODES = ("encoder", "all", "fedrep")


def shared_names(model: nn.Module, aggregate: str = "encoder") -> list[str]:
    names = list(params_of(model))
    if aggregate in ("encoder", "fedrep"):
        return [n for n in names if n.startswith("encoder.")]
    if aggregate == "all":
        return [n for n in names if not n.startswith("personal.user_")]
    raise ValueError(f"aggregate={aggregate!r}: expected one of {AGGREGATE_MODES}")


def personal_names(model: nn.Module, aggregate: str = "encoder") -> list[str]:
    shared = set(shared_names(model, aggregate))
    return [n for n in params_of(model) if n not in shared]


def params_of(model: nn.Module) -> dict[str, nn.Parameter]:
    """name -> parameter, cached on the model (clients reuse one model per process)."""
    cached = model.__dict__.get("_fedmtl_params")
    if cached is None:
        cached = dict(model.named_parameters())
        model.__dict__["_fedmtl_params"] = cached
    return cached


def get_arrays(model: nn.Module, names: list[str]) -> dict[str, np.ndarray]:
    params = params_of(model)
    return {n: params[n].detach().cpu().numpy().copy() for n in names}


@torch.no_grad()
def set_arrays(model: nn.Module, arrays: dict[str, np.ndarray]) -> None:
    params = params_of(model)
    for n, a in arrays.items():
        if n not in params:
            raise KeyError(f"unknown parameter {n!r}")
        params[n].copy_(torch.as_tensor(a, device=params[n].device))
