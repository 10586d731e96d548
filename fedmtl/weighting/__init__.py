"""Task-weighting methods by config name (`weighting=NAME` -> fedmtl/weighting/NAME.py)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Weighting
from .dwa import DWA
from .fixed import Fixed
from .gradnorm import GradNorm
from .pcgrad import PCGrad
from .uncertainty import Uncertainty

REGISTRY: dict[str, type[Weighting]] = {
    "fixed": Fixed,
    "uncertainty": Uncertainty,
    "dwa": DWA,
    "gradnorm": GradNorm,
    "pcgrad": PCGrad,
}


def build_weighting(cfg: dict, tasks: list[str]) -> Weighting:
    name = cfg.get("name", "fixed")
    if name not in REGISTRY:
        raise ConfigError(f"weighting={name}: expected one of {sorted(REGISTRY)}")
    try:
        return REGISTRY[name](tasks, **{k: v for k, v in cfg.items() if k != "name"})
    except TypeError as e:
        raise ConfigError(f"weighting={name}: {e}") from None
