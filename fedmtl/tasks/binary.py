"""Binary: a 0/1 label (like, follow, reorder), or a numeric one cut at a threshold;
logistic loss, pooled AUC (from binned scores) and logloss."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .base import Task, percentiles

AUC_BINS = 2000


def score_bins(prob: np.ndarray, bins: int = AUC_BINS) -> np.ndarray:
    """The bin of each predicted probability (a client sends these, not its scores)."""
    return np.clip((np.asarray(prob) * bins).astype(np.int64), 0, bins - 1)


def auc_from_histograms(pos: np.ndarray, neg: np.ndarray) -> float:
    """AUC of pooled scores given counts per bin (ties within a bin count one half)."""
    pos, neg = np.asarray(pos, dtype=np.float64), np.asarray(neg, dtype=np.float64)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float(((neg_below + 0.5 * neg) * pos).sum() / (n_pos * n_neg))


def logloss_sum(prob: np.ndarray, labels: np.ndarray, eps: float = 1e-7) -> float:
    p = np.clip(np.asarray(prob, dtype=np.float64), eps, 1 - eps)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).sum())


class Binary(Task):
    kind = "binary"

    def __init__(self, name: str, column: str | None = "rating", threshold: float = 0.5):
        super().__init__(name, column)
        self.threshold = float(threshold)  # positive where the label >= threshold (0/1 labels: 0.5)

    def target(self, y: torch.Tensor) -> torch.Tensor:
        return (self.value(y) >= self.threshold).float()

    def loss(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(s, self.target(y))

    def loss_per_pair(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(s, self.target(y), reduction="none")

    def parts(self, s: torch.Tensor, y: torch.Tensor) -> dict:
        return self._sums(torch.sigmoid(s).cpu().numpy(), self._labels(y))

    def _labels(self, y) -> np.ndarray:
        return (self.value(y) >= self.threshold).cpu().numpy()

    def _sums(self, prob: np.ndarray, lab: np.ndarray) -> dict:
        b = score_bins(prob)
        n = self.name
        return {f"{n}.n": int(len(lab)), f"{n}.ll": logloss_sum(prob, lab),
                f"{n}.pos_bins": b[lab].tolist(), f"{n}.neg_bins": b[~lab].tolist()}

    def check_part(self, part: dict) -> str | None:
        n_ = self.name
        n, bad = self._count(part)
        if bad or n is None:
            return bad
        pos, neg = part.get(f"{n_}.pos_bins", []), part.get(f"{n_}.neg_bins", [])
        pos, neg = (b if isinstance(b, list) else [b] for b in (pos, neg))
        if len(pos) + len(neg) != n:
            return f"{n_}.pos_bins and .neg_bins hold {len(pos) + len(neg)} scores, {n_}.n={n!r}"
        if any(not float(b).is_integer() or not 0 <= b < AUC_BINS for b in pos + neg):
            return f"{n_}: a score bin outside 0..{AUC_BINS - 1}"
        if part.get(f"{n_}.ll", 0.0) < 0:
            return f"{n_}.ll={part[f'{n_}.ll']!r}: a log loss sum below 0"
        return None

    def segment_parts(self, s: torch.Tensor, y, bounds: np.ndarray) -> list[dict]:
        """`parts` of each slice of the pairs, the labels taken once for all of them (the sigmoid
        per slice, as `parts` takes it: torch's vector and scalar paths round differently)."""
        s, lab = s.cpu(), self._labels(y)
        return [self._sums(torch.sigmoid(s[lo:hi]).numpy(), lab[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]

    def empty_parts(self) -> dict:
        n = self.name
        return {f"{n}.n": 0, f"{n}.ll": 0.0, f"{n}.pos_bins": [], f"{n}.neg_bins": []}

    def combine(self, get, parts):
        n_, out = self.name, {}
        n = sum(get(f"{n_}.n"))
        if n:
            # Parts carry the binned scores of positives and negatives (a sparse histogram).
            pos = np.bincount(np.concatenate([np.asarray(b, dtype=np.int64) for b in get(f"{n_}.pos_bins")]),
                              minlength=AUC_BINS)
            neg = np.bincount(np.concatenate([np.asarray(b, dtype=np.int64) for b in get(f"{n_}.neg_bins")]),
                              minlength=AUC_BINS)
            out[f"{n_}.auc"] = auc_from_histograms(pos, neg)
            out[f"{n_}.logloss"] = sum(get(f"{n_}.ll")) / n
            lls = [p[f"{n_}.ll"] / p[f"{n_}.n"] for p in parts if p.get(f"{n_}.n")]
            out[f"{n_}.logloss_p10"], out[f"{n_}.logloss_p90"] = percentiles(lls)
        return out

    row_spec = (("auc", "AUC"), ("logloss", "logloss"), ("logloss_p90", "logloss p90"))
    log_spec = ("auc", "logloss")
    headline_spec = ("auc", True)
