"""EASE on a DP item Gram: how much click ranking survives the noise (click_mix under
client_clip_dp / secagg_dp, docs/privacy.md "The DP recipe").

    python benchmarks/dp_gram.py --ml-path DIR/ml-100k [--clips 20,50,100] [--zs 0,1,3,5] [--lams 300,3000,10000]

On the recipe's split (per-user 80/20, split seed 0) it builds the item Gram the DP modes
release: every user's part x x^T scaled to Frobenius norm <= dp_clip (itemitem.clip_part),
summed, plus N(0, (z * dp_clip)^2) on each upper-triangle entry, mirrored; then scores
every user by x_u B (EASE alone, no click head) and prints test HR@10 and NDCG@10 (every
item the user has not rated in train ranked, as the federated runs do). The noise here
comes from a seeded NumPy generator, for a figure anyone can rerun: it is the release's
distribution, not its secret draw (fedmtl draws that from the OS CSPRNG).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # fedmtl from this checkout
from fedmtl.config import compose  # noqa: E402
from fedmtl.data import federation_for  # noqa: E402
from fedmtl.itemitem import clip_part, ease  # noqa: E402
from fedmtl.metrics import rank_metrics  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ml-path", required=True, help="the MovieLens-100k folder (GroupLens layout)")
    ap.add_argument("--clips", default="20,50,100")
    ap.add_argument("--zs", default="0,1,3,5")
    ap.add_argument("--lams", default="300,3000,10000,30000")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    cfg = compose(["experiment=ml100k_federated", f"dataset.path={args.ml_path}", f"seed={args.seed}"])
    fed = federation_for(cfg)
    tr, te = fed.split.train, fed.split.test
    users, items = int(max(tr.user.max(), te.user.max()) + 1), int(fed.meta["n_items"])
    x = np.zeros((users, items))
    x[tr.user.values, tr.item.values] = 1.0
    mask = torch.from_numpy(x > 0)
    tests = [te.item.values[te.user.values == u] for u in range(users)]
    rng = np.random.default_rng(args.seed)

    def score(gram, lam):
        hr, ndcg = rank_metrics(torch.from_numpy((x @ ease(gram, lam)).astype(np.float32)), mask, tests)
        return hr.mean(), ndcg.mean()

    print("| dp_clip | z | lambda | HR@10 | NDCG@10 |\n| --- | --- | --- | --- | --- |")
    for lam in (300, 500):
        print(f"| exact Gram | - | {lam} | %.4f | %.4f |" % score(x.T @ x, lam), flush=True)
    for clip in (float(c) for c in args.clips.split(",")):
        clipped = np.zeros((items, items))
        for u in range(users):  # each user's part, scaled to Frobenius norm <= clip
            idx = np.nonzero(x[u])[0]
            clipped[np.ix_(idx, idx)] += clip_part(np.ones((len(idx), len(idx))), clip)
        for z in (float(v) for v in args.zs.split(",")):
            noise = rng.normal(size=(items, items)) * z * clip
            noised = clipped + np.triu(noise) + np.triu(noise, 1).T
            for lam in (float(v) for v in args.lams.split(",")):
                print(f"| {clip:g} | {z:g} | {lam:g} | %.4f | %.4f |" % score(noised, lam), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
