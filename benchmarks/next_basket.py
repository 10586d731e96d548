"""Next-basket baselines on the last-basket split: the figures a federated purchase model must beat.

Protocol (issue 27): each user's last order is the test basket, the second-to-last the
validation basket, earlier orders train (fedmtl.data.temporal.last_basket). Every method
ranks all products, the user's earlier products included (repeats count: in grocery most of a
basket is a repeat). Hyper-parameters are chosen by validation NDCG@10 with train as the
history; the chosen setting is refitted on train + valid and scores the test basket once.

    Recall@K = |top-K ∩ basket| / |basket|
    NDCG@K   = sum over the top-K of 1/log2(rank + 1) for products in the basket, over the
               same sum for the first min(K, |basket|) ranks
averaged over the users who have the basket. Score ties rank the lower product id first.

Methods:
- pop: global popularity (purchase counts in the history), the same list for every user.
- topfreq: personal top-frequency: a user's own purchase counts, ties and the products the
  user never bought ordered by global popularity.
- topfreq_decay: personal top-frequency where each earlier purchase counts decay ** age, age
  = the user's baskets since it (recent repeats weigh more; decay from a grid; the same
  weighting as fedmtl's `ranking.repeat_decay`), popularity for ties.
- ease: EASE (Steck 2019) on the user x product matrix (binary or counts, chosen), lambda from
  a grid. The Gram matrix is restricted to products bought at least --ease-min-count times in
  the history (14,190 products do not fit a dense inverse in minutes on one core); the other
  products rank after them by popularity.
- als: implicit ALS (Hu, Koren, Volinsky 2008; confidence 1 + alpha * count, preference 1 for
  a bought product) solved by conjugate gradient (3 steps per half-iteration, as Takacs et al.
  2011), numpy only; factors, reg and alpha from a grid, 15 iterations, seeded.

    python benchmarks/next_basket.py --path DIR/instacart/df_sample.csv --out nb.json
    python benchmarks/next_basket.py --synthetic        # a small generated log, runs anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # fedmtl from this checkout, installed or not
from fedmtl.data.interaction_log import InteractionLog  # noqa: E402
from fedmtl.data.log_layouts import load_layout  # noqa: E402
from fedmtl.data.temporal import last_basket, recency  # noqa: E402
from fedmtl.errors import FedMTLError  # noqa: E402

K = 10
GRIDS = {
    "pop": [{}],
    "topfreq": [{}],
    "topfreq_decay": [{"decay": d} for d in (0.95, 0.9, 0.85, 0.8, 0.7)],
    "ease": [{"lam": lam, "input": x} for x in ("binary", "count") for lam in (5.0, 20.0, 100.0)],
    # 593 users: ALS gained up to 256 factors in a wider look on validation (128: NDCG@10 0.32,
    # 256: 0.37); the grid brackets that within the ~5 minutes this script may take on one core
    "als": [{"factors": f, "reg": r, "alpha": a} for f in (64, 256) for r in (10.0, 30.0) for a in (1.0, 3.0)],
}


# --- metrics ---------------------------------------------------------------------------------


def top_k(scores: np.ndarray, k: int = K) -> np.ndarray:
    """[U, k] item indices by descending score, ties to the lower index."""
    k = min(k, scores.shape[1])
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1]  # each row's k-th largest score
    out = np.empty((len(scores), k), dtype=np.int64)
    for r in range(len(scores)):
        cand = np.flatnonzero(scores[r] >= kth[r])  # every item tied with the k-th, too
        out[r] = cand[np.lexsort((cand, -scores[r, cand]))[:k]]
    return out


def recall_ndcg(scores: np.ndarray, baskets: list[np.ndarray], k: int = K) -> tuple[np.ndarray, np.ndarray]:
    """Per-row Recall@k and NDCG@k of score rows against their baskets (binary gains)."""
    top = top_k(scores, k)
    disc = 1.0 / np.log2(np.arange(2, k + 2))
    rec, ndcg = np.zeros(len(baskets)), np.zeros(len(baskets))
    for r, items in enumerate(baskets):
        items = np.unique(items)
        hit = np.isin(top[r], items)
        rec[r] = hit.sum() / len(items)
        ndcg[r] = (hit * disc).sum() / disc[: min(k, len(items))].sum()
    return rec, ndcg


# --- the methods: each maps a [U, I] count matrix to [U, I] scores ---------------------------


def popularity(C: np.ndarray) -> np.ndarray:
    return np.broadcast_to(C.sum(0), C.shape).astype(np.float64)


def top_frequency(C: np.ndarray) -> np.ndarray:
    pop = C.sum(0)
    return C + pop / (pop.max() + 1.0)  # counts are integers: popularity only breaks their ties


def decayed_top_frequency(C: np.ndarray, decay: float, history: pd.DataFrame) -> np.ndarray:
    """The user's purchases weighted decay ** age (fedmtl.data.temporal.recency), popularity
    (of the plain counts C) for ties."""
    D = counts(history, *C.shape, weights=decay ** recency(history).astype(np.float64))
    pop = C.sum(0)
    return D + 1e-6 * pop / (pop.max() + 1.0)  # below any decayed weight's difference that matters


def ease(C: np.ndarray, lam: float, input: str = "binary", min_count: int = 10) -> np.ndarray:
    pop = C.sum(0)
    keep = np.flatnonzero(pop >= min_count)
    X = (C[:, keep] > 0).astype(np.float64) if input == "binary" else C[:, keep].astype(np.float64)
    G = X.T @ X
    G[np.diag_indices_from(G)] += lam
    P = np.linalg.inv(G)
    B = -P / np.diag(P)
    np.fill_diagonal(B, 0.0)
    scores = np.full(C.shape, -1e9) + pop / (pop.max() + 1.0)  # the rest: after, by popularity
    scores[:, keep] = X @ B
    return scores


def _segment_sum(values: np.ndarray, ids: np.ndarray, n: int) -> np.ndarray:
    """Row sums of `values` grouped by `ids` (sorted ascending) into [n, f]."""
    out = np.zeros((n, values.shape[1]))
    if len(ids):
        starts = np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        out[ids[starts]] = np.add.reduceat(values, starts, axis=0)
    return out


def als_half_step(X: np.ndarray, Y: np.ndarray, rows: np.ndarray, cols: np.ndarray, w: np.ndarray,
                  reg: float, cg_steps: int = 3) -> np.ndarray:
    """New X solving (Y'Y + Y' diag(w_r) Y + reg I) x_r = sum_c (1 + w_rc) y_c for each row r by
    `cg_steps` conjugate-gradient steps from X. rows (sorted), cols, w: the nonzeros, w = alpha*count."""
    X = X.copy()
    A0 = Y.T @ Y + reg * np.eye(Y.shape[1])
    Yc = Y[cols]

    def apply(V):
        dots = np.einsum("nf,nf->n", V[rows], Yc) * w
        return V @ A0 + _segment_sum(dots[:, None] * Yc, rows, len(V))

    b = _segment_sum((1.0 + w)[:, None] * Yc, rows, len(X))
    r = b - apply(X)
    p = r.copy()
    rs = np.einsum("nf,nf->n", r, r)
    for _ in range(cg_steps):
        Ap = apply(p)
        denom = np.einsum("nf,nf->n", p, Ap)
        a = np.divide(rs, denom, out=np.zeros_like(rs), where=denom > 0)
        X += a[:, None] * p
        r -= a[:, None] * Ap
        rs_new = np.einsum("nf,nf->n", r, r)
        beta = np.divide(rs_new, rs, out=np.zeros_like(rs), where=rs > 0)
        p = r + beta[:, None] * p
        rs = rs_new
    return X


def als(C: np.ndarray, factors: int, reg: float, alpha: float, iters: int = 15, seed: int = 0,
        cg_steps: int = 3) -> np.ndarray:
    u, i = np.nonzero(C)
    w = alpha * C[u, i].astype(np.float64)
    by_item = np.lexsort((u, i))
    rng = np.random.default_rng(seed)
    X = rng.normal(0, 0.01, (C.shape[0], factors))
    Y = rng.normal(0, 0.01, (C.shape[1], factors))
    for _ in range(iters):
        X = als_half_step(X, Y, u, i, w, reg, cg_steps)
        Y = als_half_step(Y, X, i[by_item], u[by_item], w[by_item], reg, cg_steps)
    return X @ Y.T


METHODS = {"pop": popularity, "topfreq": top_frequency, "topfreq_decay": decayed_top_frequency, "ease": ease,
           "als": als}


# --- the protocol ----------------------------------------------------------------------------


def counts(history: pd.DataFrame, n_users: int, n_items: int, weights: np.ndarray | float = 1.0) -> np.ndarray:
    """The user x product matrix of purchase counts (each purchase adding `weights`, 1 by default)."""
    C = np.zeros((n_users, n_items), dtype=np.float64)
    np.add.at(C, (history["user"].to_numpy(), history["item"].to_numpy()), weights)
    return C


def target(part: pd.DataFrame) -> tuple[np.ndarray, list[np.ndarray]]:
    """The users with a basket in `part` and each one's products."""
    users, start = np.unique(part["user"].to_numpy(), return_index=True)
    items = part.sort_values("user", kind="stable")["item"].to_numpy()
    return users, np.split(items, np.r_[start[1:]] if len(start) else [])


def score(scores: np.ndarray, users: np.ndarray, baskets: list[np.ndarray]) -> tuple[float, float]:
    rec, nd = recall_ndcg(scores[users], baskets)
    return float(rec.mean()), float(nd.mean())


def run(log: InteractionLog, grids: dict | None = None, methods=None, ease_min_count: int = 10,
        seed: int = 0, progress=None) -> dict:
    """Every method's grid on the validation basket, then its best setting once on test."""
    grids = grids or GRIDS
    train, valid, test = last_basket(log)
    if valid.empty or test.empty:
        raise FedMTLError(f"{log.name}: no user has 3 baskets; the protocol needs a validation basket")
    history = {"valid": train, "test": pd.concat([train, valid], ignore_index=True)}
    C_valid = counts(history["valid"], log.n_users, log.n_items)
    C_test = counts(history["test"], log.n_users, log.n_items)
    vu, vb = target(valid)
    tu, tb = target(test)
    rows = []
    for name in methods or list(grids):
        fn, t0, grid = METHODS[name], time.perf_counter(), []

        def call(C, params, on):
            extra = ({"min_count": ease_min_count} if name == "ease" else {"seed": seed} if name == "als" else
                     {"history": history[on]} if name == "topfreq_decay" else {})
            return fn(C, **params, **extra)

        for params in grids[name]:
            rec, nd = score(call(C_valid, params, "valid"), vu, vb)
            grid.append({"params": params, "valid_recall": rec, "valid_ndcg": nd})
            if progress:
                progress(f"{name} {params}: valid Recall@{K} {rec:.4f} NDCG@{K} {nd:.4f}")
        best = max(grid, key=lambda g: g["valid_ndcg"])  # first best on ties (grid order)
        rec, nd = score(call(C_test, best["params"], "test"), tu, tb)
        rows.append({"method": name, "params": best["params"], "valid_recall": best["valid_recall"],
                     "valid_ndcg": best["valid_ndcg"], "test_recall": rec, "test_ndcg": nd,
                     "seconds": time.perf_counter() - t0, "grid": grid})
    info = {"log": log.name, "users": log.n_users, "items": log.n_items, "events": len(log.events),
            "valid_users": len(vu), "test_users": len(tu), "k": K, "ease_min_count": ease_min_count,
            "ease_items_valid": int((C_valid.sum(0) >= ease_min_count).sum()),
            "ease_items_test": int((C_test.sum(0) >= ease_min_count).sum()), "seed": seed}
    return {"setup": info, "results": rows}


def table(out: dict) -> str:
    lines = [f"| method | chosen | valid Recall@{K} | valid NDCG@{K} | test Recall@{K} | test NDCG@{K} | seconds |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in out["results"]:
        chosen = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items()) or "-"
        lines.append(f"| {r['method']} | {chosen} | {r['valid_recall']:.4f} | {r['valid_ndcg']:.4f} | "
                     f"{r['test_recall']:.4f} | {r['test_ndcg']:.4f} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def synthetic_log(n_users: int = 80, n_items: int = 300, seed: int = 0) -> InteractionLog:
    """A small grocery-like log: each user has favourite products bought again and again, the
    rest of a basket drawn by a skewed popularity; 6 to 12 baskets per user."""
    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    pop /= pop.sum()
    rows = []
    basket = 0
    for u in range(n_users):
        favs = rng.choice(n_items, size=rng.integers(4, 10), replace=False, p=pop)
        keep = rng.uniform(0.3, 0.8, size=len(favs))
        for t in range(rng.integers(6, 13)):
            items = set(favs[rng.random(len(favs)) < keep].tolist())
            items |= set(rng.choice(n_items, size=rng.integers(1, 5), p=pop).tolist())
            rows += [(u, i, t, basket) for i in sorted(items)]
            basket += 1
    ev = pd.DataFrame(rows, columns=["user", "item", "ts", "basket"]).astype(np.int64)
    ev["purchase"] = np.float32(1.0)
    return InteractionLog(name="synthetic_baskets", events=ev, n_users=n_users, n_items=n_items,
                          labels={"purchase": {"kind": "event", "column": None}},
                          raw_user_ids=np.arange(n_users), raw_item_ids=np.arange(n_items))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--path", type=Path, help="the Instacart sample, DIR/instacart/df_sample.csv (or its folder)")
    src.add_argument("--synthetic", action="store_true", help="a small generated basket log instead")
    ap.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS))
    ap.add_argument("--ease-min-count", type=int, default=10, help="EASE's products: bought at least this often")
    ap.add_argument("--seed", type=int, default=0, help="ALS's initialisation (and the synthetic log)")
    ap.add_argument("--out", type=Path, help="write the table and the grids as JSON here")
    args = ap.parse_args(argv)
    try:
        log = synthetic_log(seed=args.seed) if args.synthetic else load_layout("instacart_sample", args.path)
        print(log.describe(), flush=True)
        out = run(log, methods=args.methods, ease_min_count=args.ease_min_count, seed=args.seed,
                  progress=lambda m: print("  " + m, flush=True))
    except FedMTLError as e:
        print(f"next_basket: {e}", file=sys.stderr)
        return 2
    s = out["setup"]
    print(f"\n{s['log']}: last-basket split, {s['valid_users']} validation and {s['test_users']} test users; "
          f"EASE on the {s['ease_items_valid']} / {s['ease_items_test']} products bought >= {s['ease_min_count']} "
          "times (valid / test history)\n")
    print(table(out))
    if args.out:
        args.out.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
