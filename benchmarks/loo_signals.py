"""Which closed-form signals move the leave-one-out figures (issue 28's protocol), centralised.

On a `split=leave_one_out` run's own split and candidates (RUN_DIR/split), each row adds one
candidate signal to the reference "EASE + sequence" (benchmarks/published.py: EASE at lambda
300 plus the windowed-Gram sequence score at window 10, the 5 latest items, decay 0.7, weight
0.5, the ml100k_loo_* presets' values), with the signal's weight chosen on the validation
candidates from WEIGHTS, then scored once on test:

- directed window: pairs counted only when the second item came after the first (a "next
  item" matrix), in place of the symmetric window;
- recent popularity: each item's train interactions in the D days before the user's latest
  train interaction (any user's), log1p, D from DAYS;
- transition regression: ridge regression from the decayed history before each train
  position to the items at the next two positions (SLIST-like, Choi et al. 2021);
- ratings: the user's EASE input weighted by rating / 5 (the multi-task preset's extra
  information) in place of 0/1; the sequence score's history weighted by 1 + 0.5 x liked
  (rating >= 4) in place of its decay alone, both scores' weights chosen on validation; a
  second windowed Gram over liked interactions only (each user's liked items in their own
  order), added to the blend whose sequence weight was chosen on validation;
- test history with the validation item (SASRec's convention, Kang & McAuley 2018: the
  validation interaction joins the input when scoring test; nothing is retrained): not the
  issue's protocol, reported apart.

    python benchmarks/loo_signals.py RUN_DIR [RUN_DIR ...]

Prints one row per signal and run seed: validation and test HR@10 / NDCG@10 in %.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from published import SEQ, LooSplit, _ids  # noqa: E402
from fedmtl.data.split import read_part  # noqa: E402
from fedmtl.data.temporal import recency  # noqa: E402
from fedmtl.itemitem import ease, standardise  # noqa: E402
from fedmtl.sequence import history, seq_matrix, window_part  # noqa: E402

LAM, SEQ_WEIGHT = 300.0, 0.5  # the presets' click_mix.lam and seq_weight
WEIGHTS = (0.25, 0.5, 1.0, 2.0)
DAYS = (7, 30)


def pairs_after(df, n_users: int, n_items: int, window: int) -> np.ndarray:
    """W_dir[i, j]: users with j within `window` steps after i (0/1 per user)."""
    u, i, age = df["user"].to_numpy(), df["item"].to_numpy(), recency(df).astype(np.int64)
    order = np.argsort(u, kind="stable")
    bounds = np.searchsorted(u[order], np.arange(n_users + 1))
    found = [np.zeros(0, np.int64)]
    for a, b in zip(bounds[:-1], bounds[1:]):
        li, ag = i[order[a:b]], age[order[a:b]]
        d = ag[:, None] - ag[None, :]  # > 0: the column's item is later
        x, y = np.nonzero((d > 0) & (d <= window) & (li[:, None] != li[None, :]))
        found.append(np.unique(li[x] * n_items + li[y]))
    return np.bincount(np.concatenate(found), minlength=n_items * n_items).reshape(n_items, n_items).astype(float)


def transitions(df, n_users: int, n_items: int, last: int, decay: float, ahead: int = 2,
                lam: float = 200.0) -> np.ndarray:
    """Ridge regression B from the decayed `last` items before a train position to the items at
    that position and the next `ahead - 1` ones: B = (X^T X + lam I)^-1 X^T Y."""
    u, i, age = df["user"].to_numpy(), df["item"].to_numpy(), recency(df).astype(np.int64)
    P, Q = np.zeros((n_items, n_items)), np.zeros((n_items, n_items))
    order = np.lexsort((-age, u))
    bounds = np.searchsorted(u[order], np.arange(n_users + 1))
    for a, b in zip(bounds[:-1], bounds[1:]):
        li, ag = i[order[a:b]], age[order[a:b]]
        for t in range(1, b - a):
            prev = np.nonzero((ag > ag[t]) & (ag - ag[t] <= last))[0]
            if not len(prev):
                continue
            x = np.zeros(n_items)
            np.add.at(x, li[prev], decay ** (ag[prev] - ag[t] - 1))
            y = np.zeros(n_items)
            y[li[(ag <= ag[t]) & (ag[t] - ag < ahead)]] = 1.0
            nz = np.nonzero(x)[0]
            P[np.ix_(nz, nz)] += np.outer(x[nz], x[nz])
            Q[nz] += np.outer(x[nz], y)
    return np.linalg.solve(P + lam * np.eye(n_items), Q)


def liked_history(df, liked: np.ndarray, n_users: int, n_items: int) -> np.ndarray:
    """The sequence score's h (sequence.history: decay ** age over the `last` latest items) with
    each item's weight multiplied by 1 + 0.5 x liked."""
    u, i, age = df["user"].to_numpy(), df["item"].to_numpy(), recency(df).astype(np.int64)
    keep = age < SEQ["last"]
    h = np.zeros((n_users, n_items))
    np.maximum.at(h, (u[keep], i[keep]), SEQ["decay"] ** age[keep] * (1 + 0.5 * liked[keep]))
    return h


def study(run_dir: Path) -> list[tuple[str, tuple, tuple, str]]:
    sp = LooSplit(run_dir / "split")
    n_users, n_items = sp.X.shape
    train = read_part(run_dir / "split" / "train.tsv")
    valid = read_part(run_dir / "split" / "valid.tsv")
    seen = torch.as_tensor(sp.X > 0)
    B = ease(sp.X.T @ sp.X, LAM)
    z = lambda a, mask=seen: standardise(torch.as_tensor(a), mask)  # noqa: E731
    u, i = (torch.as_tensor(train[c].to_numpy(np.int64).copy()) for c in ("user", "item"))
    age = torch.as_tensor(recency(train))
    S = seq_matrix(window_part(u, i, age, np.arange(n_items), SEQ["window"]), sp.X.T @ sp.X)
    h = history(u, i, age, n_users, n_items, SEQ["last"], SEQ["decay"]).numpy()
    base = z(sp.X @ B) + SEQ_WEIGHT * z(h @ S)
    rows = [("EASE + sequence (presets' values)", sp.score(base.numpy(), "valid"), sp.score(base.numpy(), "test"), "")]

    def add(name: str, signal: np.ndarray, start=base):
        best = None
        for w in WEIGHTS:
            s = (start + w * z(signal)).numpy()
            v = sp.score(s, "valid")
            if best is None or v > best[0]:
                best = (v, w, s)
        rows.append((name, best[0], sp.score(best[2], "test"), f"weight {best[1]:g}"))
        return torch.as_tensor(best[2])

    c = np.sqrt(np.diag(sp.X.T @ sp.X) + 1.0)
    directed = pairs_after(train, n_users, n_items, SEQ["window"]) / c[:, None] / c[None, :]
    add("directed window in place of the symmetric one", h @ directed, z(sp.X @ B))
    t, it, uu = train["ts"].to_numpy(), train["item"].to_numpy(), train["user"].to_numpy()
    latest = np.zeros(n_users)
    np.maximum.at(latest, uu, t)
    order = np.argsort(t)
    for days in DAYS:
        lo = np.searchsorted(t[order], latest - days * 86400)
        hi = np.searchsorted(t[order], latest, side="right")
        pop = np.stack([np.bincount(it[order][a:b], minlength=n_items) for a, b in zip(lo, hi)])
        add(f"+ recent popularity ({days} days)", np.log1p(pop))
    add("+ transition regression", h @ transitions(train, n_users, n_items, SEQ["last"], SEQ["decay"]))
    R = np.zeros_like(sp.X)
    R[uu, it] = train["rating"].to_numpy()
    rated = z(R / 5 @ B) + SEQ_WEIGHT * z(h @ S)
    rows.append(("ratings: EASE input rating / 5", sp.score(rated.numpy(), "valid"), sp.score(rated.numpy(), "test"),
                 ""))
    # the like label in the sequence score: a fair comparison lets the sequence weight move too
    # (a larger weight alone lifts the centralised score), so both blends pick it on validation
    liked = (train["rating"].to_numpy() >= 4).astype(np.float64)
    ref = add("sequence weight chosen on validation (the reference for the next two rows)", h @ S, z(sp.X @ B))
    add("ratings: sequence history x (1 + 0.5 liked)", liked_history(train, liked, n_users, n_items) @ S, z(sp.X @ B))
    lk = liked > 0
    tl = torch.as_tensor(lk)
    S_l = seq_matrix(window_part(u[tl], i[tl], torch.as_tensor(recency(train[lk])), np.arange(n_items), SEQ["window"]),
                     sp.X.T @ sp.X)
    add("ratings: the reference + a windowed Gram of liked interactions only", h @ S_l, ref)
    # SASRec's convention: test scored from train + the validation interaction (nothing retrained)
    both = pd.concat([train, valid], ignore_index=True)
    X2 = sp.X.copy()
    X2[valid["user"].to_numpy(), valid["item"].to_numpy()] = 1.0
    seen2 = torch.as_tensor(X2 > 0)
    u2, i2 = (torch.as_tensor(both[c].to_numpy(np.int64).copy()) for c in ("user", "item"))
    h2 = history(u2, i2, torch.as_tensor(recency(both)), n_users, n_items, SEQ["last"], SEQ["decay"]).numpy()
    for w in (SEQ_WEIGHT, 1.0):
        s = (z(X2 @ B, seen2) + w * z(h2 @ S, seen2)).numpy()
        rows.append((f"test history + the validation item (SASRec's convention; seq weight {w:g})", (np.nan, np.nan),
                     sp.score(s, "test"), "not the issue's protocol"))
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="split=leave_one_out run folders")
    args = ap.parse_args(argv)
    print("| run | signal | valid HR@10 | valid NDCG@10 | test HR@10 | test NDCG@10 | note |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for d in args.runs:
        _ids(d / "split" / "train.tsv")  # one clear line for a folder without a split
        for name, v, t, note in study(d):
            print(f"| {d.name} | {name} | {100 * v[0]:.2f} | {100 * v[1]:.2f} | {100 * t[0]:.2f} | {100 * t[1]:.2f} "
                  f"| {note} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
