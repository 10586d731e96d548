"""Metrics of PROTOCOL.md, computed per client as additive parts and combined.

A client's evaluation returns a flat dict of sums, counts and histograms
("parts"); `combine` adds the parts of any set of clients (one client for the
centralised baseline, all of them in federated and local-only runs) into the
final figures, so every mode is scored by the same code.

- rating: RMSE (predictions clipped to 1..5) and MAE over all test pairs.
- like: AUC over all test pairs pooled, from the clients' binned scores
  (`AUC_BINS` bins on the predicted probability; exact up to ties within a
  bin), and mean logloss.
- click: full-ranking HR@10 and NDCG@10 over every item the user has not
  interacted with in train, averaged over users; under split=leave_one_out, the held-out
  item ranked among its sampled negatives (`sampled_rank_metrics`), and the validation
  item's figures as "valid/click.*".
Spread: the 10th and 90th percentile over clients of RMSE, logloss and NDCG@10.
Each task's parts and their combination live with its kind (fedmtl/tasks/); `combine` asks
every registered task.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch

from .tasks.base import REGISTRY, percentiles as _percentiles
from .tasks.binary import AUC_BINS, auc_from_histograms, logloss_sum, score_bins  # noqa: F401 (re-exported)


def auc_exact(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney AUC with ties counted as one half."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    # average ranks for ties
    uniq, start, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def histograms(prob: np.ndarray, labels: np.ndarray, bins: int = AUC_BINS) -> tuple[np.ndarray, np.ndarray]:
    idx = score_bins(prob, bins)
    labels = np.asarray(labels).astype(bool)
    return (np.bincount(idx[labels], minlength=bins), np.bincount(idx[~labels], minlength=bins))


def rank_metrics(scores: torch.Tensor, train_mask: torch.Tensor | None, test_lists: list[np.ndarray], k: int = 10,
                 recall: bool = False):
    """Per-user hit@k and NDCG@k (binary relevance) with train items excluded.

    scores: [U, n_items]; train_mask: [U, n_items] bool (None: nothing excluded, repeat
    consumption); test_lists[u]: the user's test items. recall: also Recall@k (the share of the
    user's distinct test items in the top k), returned third.
    """
    if train_mask is None:
        train_mask = torch.zeros_like(scores, dtype=torch.bool)
    masked = scores.masked_fill(train_mask, float("-inf"))
    top = torch.topk(masked, k=min(k, masked.shape[1]), dim=1).indices.cpu().numpy()
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    lens = np.array([len(x) for x in test_lists], dtype=np.int64)
    test = np.zeros((len(test_lists), scores.shape[1]), bool)  # each user's test items (repeats once)
    if lens.sum():
        test[np.repeat(np.arange(len(test_lists)), lens), np.concatenate(test_lists).astype(np.int64)] = True
    rel = np.take_along_axis(test, top, 1)  # [U, k]: a test item at this place of the top k
    has = lens > 0
    hr = np.where(has, rel.any(1).astype(np.float64), 0.0)
    # per user, as one user alone: (rel * discounts).sum() / idcg, idcg = discounts[:min(len(items), k)].sum()
    idcg = np.array([discounts[:m].sum() for m in range(k + 1)])[np.minimum(lens, k)]
    ndcg = np.where(has, (rel * discounts[:rel.shape[1]]).sum(1) / np.where(has, idcg, 1.0), 0.0)
    if not recall:
        return hr, ndcg
    rec = np.where(has, rel.sum(1) / np.maximum(test.sum(1), 1), 0.0)  # share of the distinct test items
    return hr, ndcg, rec


def sampled_rank_metrics(scores: torch.Tensor, cand: torch.Tensor, k: int = 10):
    """Per-user hit@k and NDCG@k of a held-out item ranked among sampled negatives
    (split=leave_one_out). scores: [U, n_items]; cand: [U, 1 + N], the held-out item then its
    negatives (a row of -1: no held-out item, scored 0). rank = 1 + the negatives scoring at
    least as high (a tie ranks the negative ahead); NDCG@k = 1 / log2(1 + rank) within the top k."""
    s = scores.gather(1, cand.clamp(min=0)).double()
    rank = 1 + (s[:, 1:] >= s[:, :1]).sum(1).cpu().numpy()
    hit = (rank <= k) & (cand[:, 0] >= 0).cpu().numpy()
    return hit.astype(np.float64), np.where(hit, 1.0 / np.log2(1.0 + rank), 0.0)


def _groups(keys) -> list[str]:
    """The metric groups ("group/key") among these keys, sorted."""
    return sorted({k.split("/", 1)[0] for k in keys if "/" in k})


def _in_group(part: dict, g: str) -> dict:
    """The keys of group g, without their "g/" ("": the keys of no group)."""
    if not g:
        return {k: v for k, v in part.items() if "/" not in k}
    return {k[len(g) + 1:]: v for k, v in part.items() if k.startswith(g + "/")}


def combine(parts: list[dict]) -> dict[str, float]:
    """Final metrics from the evaluation parts of any number of clients. Parts named
    "group/key" (e.g. new_items/click.hr, on a subset of the test rows) are combined per
    group into "group/metric"."""
    out = _combine([_in_group(p, "") for p in parts])
    for g in _groups(k for p in parts for k in p):
        out.update({f"{g}/{k}": v for k, v in _combine([_in_group(p, g) for p in parts]).items()})
    return out


def check_part(part: dict) -> str | None:
    """What makes one client's parts impossible, per task and metric group (Task.check_part:
    counts, sums their counts cannot give, AUC bins out of range), or None. Pooling a part alone
    cannot show all of it: a count of 0 skips the part's other values, which pooled with the
    others' then break the pool or move the figures."""
    for g in ["", *_groups(part)]:
        for task in REGISTRY.values():
            problem = task.check_part(_in_group(part, g))
            if problem is not None:
                return f"{g}/{problem}" if g else problem
    return None


def _combine(parts: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    get = lambda key: [p[key] for p in parts if key in p]  # noqa: E731
    for task in REGISTRY.values():
        out.update(task.combine(get, parts))
    return out


class _Headline(Mapping):
    """The headline metric of each registered task and whether larger is better (tables,
    selection): a live view of the registry."""

    def __getitem__(self, task):
        return REGISTRY[task].headline()

    def __iter__(self):
        return iter(REGISTRY)

    def __len__(self):
        return len(REGISTRY)


HEADLINE = _Headline()
