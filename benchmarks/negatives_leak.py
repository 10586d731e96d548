"""How much the published code's training negatives tell a personalised model about the held-out items.

The published federated recommenders' code (PFedRec's data.py, which GPFedRec and CoFedRec
build on) draws each round's training negatives from `item_pool - interacted_items`, where
`interacted_items` is computed on the whole log *before* the leave-one-out split: the
user's test and validation items are never drawn as negatives, while every other item the
user has not trained on (the 99 test negatives included) is. A model with per-user item
parameters (PFedRec's personalised item embeddings) can learn exactly that difference.

This script trains one centralised model twice on a run's leave-one-out split
(RUN_DIR/split), changing only that pool: matrix factorisation (32 factors, Adam) plus a
per-user offset for every (user, item) pair (the personalisation), binary cross-entropy
with 4 negatives per positive resampled every epoch (the published training), drawn from

- clean: the items not in the user's train part (what fedmtl's click losses see), or
- published: the items the user never interacted with at all (test and validation items excluded),

and reports each one's test HR@10 / NDCG@10 (99 negatives) at the epoch with the best
validation HR@10, on the run's own candidates.

    python benchmarks/negatives_leak.py RUN_DIR [--epochs 15] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))
from published import LooSplit  # noqa: E402
from fedmtl.metrics import sampled_rank_metrics  # noqa: E402


def train(sp: LooSplit, pool_mask: torch.Tensor, epochs: int, seed: int, dim: int = 32, negatives: int = 4):
    """(validation HR@10, test HR@10, test NDCG@10, epoch) at the best validation HR@10."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    n_users, n_items = sp.X.shape
    u_tr, i_tr = (torch.as_tensor(a) for a in np.nonzero(sp.X))
    P = torch.nn.Parameter(torch.randn(n_users, dim) * 0.01)
    Q = torch.nn.Parameter(torch.randn(n_items, dim) * 0.01)
    D = torch.nn.Embedding(n_users * n_items, 1, sparse=True)  # per-user item offsets (personalisation)
    torch.nn.init.zeros_(D.weight)
    opt, opt_d = torch.optim.Adam([P, Q], lr=0.01), torch.optim.SparseAdam(D.parameters(), lr=0.01)
    cand = {p: (torch.as_tensor(c[:, 0]), torch.as_tensor(c[:, 1:])) for p, c in sp.cand.items()}
    best = None
    for ep in range(1, epochs + 1):
        uu = u_tr.repeat_interleave(negatives)
        neg = torch.randint(0, n_items, (len(uu),), generator=gen)
        for _ in range(50):  # rejection: redraw the ones outside the pool
            bad = pool_mask[uu, neg]
            if not bad.any():
                break
            neg[bad] = torch.randint(0, n_items, (int(bad.sum()),), generator=gen)
        users, items = torch.cat([u_tr, uu]), torch.cat([i_tr, neg])
        y = torch.cat([torch.ones(len(u_tr)), torch.zeros(len(uu))])
        perm = torch.randperm(len(y), generator=gen)
        for s in range(0, len(y), 1024):
            b = perm[s:s + 1024]
            logit = (P[users[b]] * Q[items[b]]).sum(-1) + D(users[b] * n_items + items[b]).squeeze(-1)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, y[b])
            loss = loss + 1e-5 * (P[users[b]].pow(2).sum() + Q[items[b]].pow(2).sum())
            opt.zero_grad()
            opt_d.zero_grad()
            loss.backward()
            opt.step()
            opt_d.step()
        with torch.no_grad():
            S = P @ Q.T + D.weight.view(n_users, n_items)
            fig = {p: sampled_rank_metrics(S[u], c) for p, (u, c) in cand.items()}
        v = float(fig["valid"][0].mean())
        if best is None or v >= best[0]:  # the later epoch on a tie, as the published code
            best = (v, float(fig["test"][0].mean()), float(fig["test"][1].mean()), ep)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a split=leave_one_out run folder")
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    sp = LooSplit(args.run_dir / "split")
    train_mask = torch.as_tensor(sp.X > 0)
    if not sp.X[:, 0].any() and not any((c[:, 1:] == 0).any() for c in sp.cand.values()):
        train_mask[:, 0] = True  # 1-based ids (MovieLens): item 0 does not exist, never a negative
    held_out = train_mask.clone()
    for c in sp.cand.values():  # the test and validation items: never negatives in the published code
        held_out[torch.as_tensor(c[:, 0]), torch.as_tensor(c[:, 1])] = True
    print("| training negatives drawn from | validation HR@10 | test HR@10 | test NDCG@10 | epoch |")
    print("| --- | --- | --- | --- | --- |")
    for name, mask in (("items not in the user's train part (clean)", train_mask),
                       ("items the user never interacted with (the published code: held-out items excluded)",
                        held_out)):
        v, hr, nd, ep = train(sp, mask, args.epochs, args.seed)
        print(f"| {name} | {100 * v:.2f} | {100 * hr:.2f} | {100 * nd:.2f} | {ep} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
