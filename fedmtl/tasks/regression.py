"""Regression: a numeric label (rating, play time); squared error, RMSE and MAE."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .base import Task, percentiles


class Regression(Task):
    kind = "regression"

    def __init__(self, name: str, column: str | None = "rating", clip: tuple[float, float] | None = None,
                 offset: float | None = 0.0):
        """offset: the head's first offset (a rating's 3.5); None: each client's own mean of its
        training labels (a log's numeric label, whose level nothing else tells: from 0, the
        personal offset would climb by about Adam's learning rate a local step while the shared item biases, moved by
        every client, overshoot and swing from round to round)."""
        super().__init__(name, column)
        self.clip, self.head_offset, self.from_data = clip, float(offset or 0.0), offset is None

    def initial_offset(self, y) -> float | None:
        v = self.value(y) if self.from_data else None
        return float(v.double().mean()) if v is not None and len(v) else None

    def loss(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.mse_loss(s, self.value(y))

    def loss_per_pair(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (s - self.value(y)) ** 2

    def parts(self, s: torch.Tensor, y: torch.Tensor) -> dict:
        """Predictions clipped to `clip` (the label's range), squared and absolute errors summed."""
        return self._sums(self._errors(s, y))

    def _errors(self, s: torch.Tensor, y) -> np.ndarray:
        if self.clip is not None:
            s = s.clamp(*self.clip)
        return (s - self.value(y)).cpu().numpy().astype(np.float64)

    def _sums(self, err: np.ndarray) -> dict:
        n = self.name
        return {f"{n}.n": int(len(err)), f"{n}.se": float((err ** 2).sum()), f"{n}.ae": float(np.abs(err).sum())}

    def check_part(self, part: dict) -> str | None:
        n, bad = self._count(part)
        if bad or n is None:
            return bad
        for key in ("se", "ae"):
            v = part.get(f"{self.name}.{key}", 0.0)
            if v < 0 or (n == 0 and v != 0):
                return f"{self.name}.{key}={v!r} with {self.name}.n={n!r}"
        return None

    def segment_parts(self, s: torch.Tensor, y, bounds: np.ndarray) -> list[dict]:
        """`parts` of each slice of the pairs, the errors computed once for all of them."""
        err = self._errors(s, y)
        return [self._sums(err[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def empty_parts(self) -> dict:
        n = self.name
        return {f"{n}.n": 0, f"{n}.se": 0.0, f"{n}.ae": 0.0}

    def combine(self, get, parts):
        n_, out = self.name, {}
        n = sum(get(f"{n_}.n"))
        if n:
            out[f"{n_}.rmse"] = math.sqrt(sum(get(f"{n_}.se")) / n)
            out[f"{n_}.mae"] = sum(get(f"{n_}.ae")) / n
            rmses = [math.sqrt(p[f"{n_}.se"] / p[f"{n_}.n"]) for p in parts if p.get(f"{n_}.n")]
            out[f"{n_}.rmse_p10"], out[f"{n_}.rmse_p90"] = percentiles(rmses)
        return out

    row_spec = (("rmse", "RMSE"), ("mae", "MAE"), ("rmse_p90", "RMSE p90 (worst 10% of clients)"))
    log_spec = ("rmse", "mae")
    headline_spec = ("rmse", False)
