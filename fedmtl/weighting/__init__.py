"""Task-weighting methods by config name (`weighting=NAME` -> fedmtl/weighting/NAME.py)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Weighting
from .fixed import Fixed

REGISTRY: dict[str, type[Weighting]] = {"fixed": Fixed}


def build_weighting(cfg: dict, tasks: list[str]) -> Weighting:
    name = cfg.get("name", "fixed")
    if name not in REGISTRY:
        raise ConfigError(f"weighting={name}: expected one of {sorted(REGISTRY)}")
    return REGISTRY[name](tasks, **{k: v for k, v in cfg.items() if k != "name"})
