"""Bare matrix factorisation on a run's split: the latent-factor references for click.

Two centralised models, neither a fedmtl model (both pool every user's train items), to
tell what a plain dot product of a user and an item factor can reach on the same split
and the same full-ranking metrics as fedmtl (`fedmtl.metrics.rank_metrics`; every item
not in the user's train part is a candidate):

- `softmax`: each user's items under a softmax over all items (the loss of fedmtl's
  click head), factors and an item bias trained with Adam, L2 of `--l2` on every
  (user, item) pair's two factors (so it grows with a user's or an item's count, as
  fedmtl's `train.l2` does). `--batch 0` (default) takes full-batch steps; `--batch N`
  takes epochs of N-pair mini-batches, as fedmtl's centralised baseline does.
- `ials`: implicit ALS (Hu, Koren and Volinsky 2008), the `implicit` library's
  formulation: confidence 1 + alpha on the observed pairs, 1 on all others, L2 `--reg`,
  alternating closed-form solves (PROTOCOL.md's tuned ALS: 32 factors, reg 30, alpha 5).

On a `split.validation=true` run the split is the validation carve, so these are the
validation figures a bare factor model reaches (docs/quality.md).

    python benchmarks/mf.py RUN_DIR --n-items 1682                        # softmax, full batch
    python benchmarks/mf.py RUN_DIR --n-items 1682 --batch 256 --lr 0.002 --steps 40
    python benchmarks/mf.py RUN_DIR --n-items 1682 --model ials --steps 30
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # fedmtl from this checkout, installed or not
sys.path.insert(0, str(HERE))
from ease import Split, read_split  # noqa: E402


def softmax_mf(split: Split, dim: int, l2: float, lr: float, steps: int, batch: int, eval_every: int,
               seed: int = 0, init_std: float = 0.1):
    """Yield (step, HR@10, NDCG@10) every eval_every steps (epochs when batch > 0)."""
    g = torch.Generator().manual_seed(seed)
    n_users, n_items = split.X.shape
    U = (torch.randn(n_users, dim, generator=g) * init_std).requires_grad_()
    V = (torch.randn(n_items, dim, generator=g) * init_std).requires_grad_()
    b = torch.zeros(n_items, requires_grad=True)
    opt = torch.optim.Adam([U, V, b], lr=lr)
    pairs = torch.as_tensor(split.train)
    n_pairs = float(len(pairs))
    user_n, item_n = split.X.sum(1), split.X.sum(0)

    def logits(u_rows):
        return (u_rows @ V.T + b).masked_fill(split.no_item, float("-inf"))

    for step in range(1, steps + 1):
        if batch:
            for order in torch.randperm(len(pairs), generator=g).split(batch):
                u, i = pairs[order, 0], pairs[order, 1]
                opt.zero_grad()
                loss = torch.nn.functional.cross_entropy(logits(U[u]), i) \
                    + l2 * (U[u].pow(2).sum(1).mean() + V[i].pow(2).sum(1).mean())
                loss.backward()
                opt.step()
        else:
            opt.zero_grad()
            nll = -(torch.log_softmax(logits(U), 1).nan_to_num(neginf=0.0) * split.X).sum() / n_pairs
            reg = l2 * ((U.pow(2).sum(1) * user_n).sum() + (V.pow(2).sum(1) * item_n).sum()) / n_pairs
            (nll + reg).backward()
            opt.step()
        if step % eval_every == 0 or step == steps:
            with torch.no_grad():
                yield (step, *split.score(U @ V.T + b))


def ials(split: Split, dim: int, reg: float, alpha: float, steps: int, eval_every: int, seed: int = 0):
    """Yield (iteration, HR@10, NDCG@10): alternating exact solves of the user and item factors."""
    X = split.X.double().numpy()
    rng = np.random.default_rng(seed)
    U = rng.normal(0, 0.01, (X.shape[0], dim))
    V = rng.normal(0, 0.01, (X.shape[1], dim))

    def solve(B, R):  # each row a of R's owner: min sum_j c_j (p_j - a.b_j)^2 + reg |a|^2
        G = B.T @ B + reg * np.eye(dim)
        out = np.zeros((R.shape[0], dim))
        for r in range(R.shape[0]):
            idx = np.nonzero(R[r])[0]
            if len(idx):
                Bi = B[idx]
                out[r] = np.linalg.solve(G + alpha * Bi.T @ Bi, (1 + alpha) * Bi.sum(0))
        return out

    for it in range(1, steps + 1):
        U = solve(V, X)
        V = solve(U, X.T)
        if it % eval_every == 0 or it == steps:
            yield (it, *split.score(torch.as_tensor(U @ V.T)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run folder (or any folder with split/train.tsv, split/test.tsv)")
    ap.add_argument("--model", choices=["softmax", "ials"], default="softmax")
    ap.add_argument("--dim", type=int, default=32)
    ap.add_argument("--l2", type=float, default=0.1, help="softmax: L2 per (user, item) pair on its two factors")
    ap.add_argument("--lr", type=float, default=0.05, help="softmax: Adam's rate")
    ap.add_argument("--batch", type=int, default=0, help="softmax: pairs a mini-batch; 0 = full-batch steps")
    ap.add_argument("--reg", type=float, default=30.0, help="ials: L2 on every factor")
    ap.add_argument("--alpha", type=float, default=5.0, help="ials: confidence of an observed pair is 1 + alpha")
    ap.add_argument("--steps", type=int, default=100, help="softmax: steps (epochs with --batch); ials: iterations")
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n-items", type=int, default=None, help="catalogue size when ids run 1..N")
    args = ap.parse_args(argv)
    for name in ("dim", "steps", "eval_every"):
        if getattr(args, name) < 1:
            raise SystemExit(f"mf: --{name.replace('_', '-')} {getattr(args, name)}: must be >= 1")
    if args.batch < 0:
        raise SystemExit(f"mf: --batch {args.batch}: must be >= 0")
    torch.manual_seed(args.seed)
    sp = args.run_dir / "split"
    split = Split(read_split(sp / "train.tsv", "mf"), read_split(sp / "test.tsv", "mf"), args.n_items, prog="mf")
    if args.model == "softmax":
        what = f"softmax MF, dim {args.dim}, L2 {args.l2:g}, Adam {args.lr:g}, " \
               + (f"{args.batch}-pair batches" if args.batch else "full batch")
        runs = softmax_mf(split, args.dim, args.l2, args.lr, args.steps, args.batch, args.eval_every, args.seed)
    else:
        what = f"iALS, dim {args.dim}, reg {args.reg:g}, alpha {args.alpha:g}"
        runs = ials(split, args.dim, args.reg, args.alpha, args.steps, args.eval_every, args.seed)
    unit = "epoch" if args.model == "softmax" and args.batch else ("iteration" if args.model == "ials" else "step")
    print(f"{what} on {sp} ({len(split.train):,} train pairs)")
    print(f"| {unit} | HR@10 | NDCG@10 |\n| --- | --- | --- |")
    best = (-1.0, 0, 0.0)
    for step, hr, nd in runs:
        print(f"| {step} | {hr:.4f} | {nd:.4f} |", flush=True)
        best = max(best, (nd, step, hr))
    print(f"best NDCG@10 {best[0]:.4f} (HR@10 {best[2]:.4f}) at {unit} {best[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
