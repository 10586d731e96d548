"""Fixed task weights from config."""

from __future__ import annotations

from ..errors import ConfigError
from ..tasks import REGISTRY as TASKS
from .base import Weighting


class Fixed(Weighting):
    def __init__(self, tasks, weights=None):
        super().__init__(tasks)
        weights = dict(weights or {})
        unknown = set(weights) - set(tasks) - set(TASKS)
        if unknown:
            raise ConfigError(f"weighting.weights: unknown task {sorted(unknown)[0]!r}")
        self.weights = {t: float(weights.get(t, 1.0)) for t in self.tasks}

    def backward(self, losses, shared_params):
        return self.weighted_backward(losses, self.weights)
