"""EASE (Steck, WWW 2019) on a run's split: the closed-form item-item reference for click.

A centralised reference, not a fedmtl model: it pools every user's train items into the
item-item Gram matrix. It scores the split a fedmtl run wrote (RUN/split/train.tsv and
test.tsv, `user<TAB>item<TAB>rating<TAB>timestamp`) with the same full-ranking HR@10 and
NDCG@10 (`fedmtl.metrics.rank_metrics`: every item not in the user's train part is a
candidate). On a `split.validation=true` run the split is the validation carve, so this
gives the validation figure a tuned item-item model reaches, the yardstick for the
validation NDCG@10 of fedmtl candidates (PROTOCOL.md lists EASE's test figures).

    python benchmarks/ease.py RUN_DIR                       # lambda 300, 500, 700, 1000
    python benchmarks/ease.py RUN_DIR --lambdas 500 --n-items 1682

Item ids are the split's own (MovieLens: 1..1682); --n-items counts the catalogue when
some items appear in neither file (default: the largest id seen), as on a validation
carve, where fedmtl still ranks them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # fedmtl from this checkout, installed or not
from fedmtl.data.split import read_part  # noqa: E402
from fedmtl.errors import DataError  # noqa: E402
from fedmtl.itemitem import ease  # noqa: E402
from fedmtl.metrics import rank_metrics  # noqa: E402


def read_split(path: Path, prog: str = "ease") -> np.ndarray:
    """(user, item) int pairs of a split file, read by fedmtl's own split reader; one line if bad."""
    try:
        part = read_part(path)
    except DataError as e:
        raise SystemExit(f"{prog}: {e}") from None
    a = part[["user", "item"]].to_numpy(dtype=np.int64, copy=True)
    if a.min() < 0:
        raise SystemExit(f"{prog}: {path}: negative user or item id")
    return a


def ease_scores(X: np.ndarray, lam: float) -> np.ndarray:
    """X @ B with B = argmin ||X - XB||^2 + lam ||B||^2 subject to diag(B) = 0 (closed form,
    `fedmtl.itemitem.ease`: the same B the federated click blend uses, from the pooled Gram)."""
    return X @ ease(X.T @ X, lam).astype(X.dtype)


class Split:
    """The split as a 0/1 matrix (item column 0 is no item when ids are 1-based) and the test lists."""

    def __init__(self, train: np.ndarray, test: np.ndarray, n_items: int | None = None, prog: str = "ease"):
        n_users = int(max(train[:, 0].max(), test[:, 0].max())) + 1
        seen = int(max(train[:, 1].max(), test[:, 1].max())) + 1
        if n_items is not None and n_items + 1 < seen:
            raise SystemExit(f"{prog}: --n-items {n_items}: the split holds item id {seen - 1}")
        width = max(seen, (n_items or 0) + 1)
        self.train = train
        self.X = torch.zeros(n_users, width)
        self.X[torch.as_tensor(train[:, 0]), torch.as_tensor(train[:, 1])] = 1.0
        self.users = np.unique(test[:, 0])
        self.lists = [test[test[:, 0] == u, 1] for u in self.users]
        self.mask = self.X[torch.as_tensor(self.users)] > 0
        self.no_item = torch.zeros(width, dtype=torch.bool)
        if not (train[:, 1] == 0).any() and not (test[:, 1] == 0).any():  # 1-based ids
            self.no_item[0] = True
        self.mask[:, self.no_item] = True

    def score(self, scores: torch.Tensor, k: int = 10) -> tuple[float, float]:
        """(HR@k, NDCG@k) of full [users, items] scores, over the users with test items."""
        hr, nd = rank_metrics(scores[torch.as_tensor(self.users)], self.mask, self.lists, k)
        return float(hr.mean()), float(nd.mean())


def evaluate(train: np.ndarray, test: np.ndarray, lambdas: list[float], n_items: int | None = None,
             k: int = 10) -> list[tuple[float, float, float]]:
    """(lambda, HR@k, NDCG@k) over the users with test items, for each lambda."""
    split = Split(train, test, n_items)
    X = split.X.double().numpy()
    return [(lam, *split.score(torch.as_tensor(ease_scores(X, lam)), k)) for lam in lambdas]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", type=Path, help="a run folder (or any folder with split/train.tsv, split/test.tsv)")
    ap.add_argument("--lambdas", type=float, nargs="+", default=[300.0, 500.0, 700.0, 1000.0])
    ap.add_argument("--n-items", type=int, default=None, help="catalogue size when ids run 1..N")
    args = ap.parse_args(argv)
    split = args.run_dir / "split"
    train, test = read_split(split / "train.tsv"), read_split(split / "test.tsv")
    print(f"EASE on {split} ({len(train):,} train, {len(test):,} test pairs)")
    print("| lambda | HR@10 | NDCG@10 |\n| --- | --- | --- |")
    for lam, hr, nd in evaluate(train, test, args.lambdas, args.n_items):
        print(f"| {lam:g} | {hr:.4f} | {nd:.4f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
