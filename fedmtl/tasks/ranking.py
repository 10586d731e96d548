"""Ranking: which items a user interacts with (click, purchase). Trained with the softmax over
items (or its sampled forms, see losses.py); scored by full ranking: HR@K and NDCG@K (and
Recall@K) of the user's test items among every item, the user's train items excluded unless
`exclude_seen=False` (repeat consumption: earlier items stay candidates; `repeat_weight` then
adds w * log(1 + the user's count of the item) to the model's scores, a personal-frequency prior;
with `repeat_decay` d < 1 each earlier purchase counts d ** age, age = the baskets since it)."""

from __future__ import annotations

from ..errors import ConfigError
from .base import Task, percentiles


class Ranking(Task):
    kind = "ranking"
    pairwise = False

    def __init__(self, name: str, column: str | None = None, k: int = 10, exclude_seen: bool = True,
                 recall: bool | None = None, repeat_weight: float = 0.0, repeat_decay: float = 1.0):
        if column is not None:  # a 0/1 column's rows as the only positives: not built (the loss takes every row)
            raise ConfigError(f"task {name}: a ranking task takes every interaction as a positive (column=None); "
                              f"column={column!r} is not supported")
        super().__init__(name, column)
        self.k, self.exclude_seen = int(k), bool(exclude_seen)
        # repeat consumption: w * log(1 + the user's own count of the item in train) added to the
        # model's scores when ranking (the client's own history; nothing leaves it). 0: off
        self.repeat_weight = float(repeat_weight)
        # each earlier interaction counts repeat_decay ** (its baskets, or events, since): recent repeats
        # weigh more (1: plain counts)
        self.repeat_decay = float(repeat_decay)
        # Recall@K beside HR@K and NDCG@K (default: with repeat consumption, where baskets are compared)
        self.recall = (not self.exclude_seen) if recall is None else bool(recall)

    def check_part(self, part: dict) -> str | None:
        n, bad = self._count(part)
        if bad or n is None:
            return bad
        for key in ("hr", "ndcg", "recall"):  # per user at most 1 (1e-9: NDCG's float sums)
            v = part.get(f"{self.name}.{key}", 0.0)
            if not 0 <= v <= n * (1 + 1e-9) + 1e-9:
                return f"{self.name}.{key}={v!r} outside 0..{self.name}.n={n!r}"
        return None

    def empty_parts(self) -> dict:
        n = self.name
        return {f"{n}.n": 0, f"{n}.hr": 0.0, f"{n}.ndcg": 0.0, **({f"{n}.recall": 0.0} if self.recall else {})}

    def combine(self, get, parts):
        n_, k, out = self.name, self.k, {}
        n = sum(get(f"{n_}.n"))
        if n:
            out[f"{n_}.hr@{k}"] = sum(get(f"{n_}.hr")) / n
            out[f"{n_}.ndcg@{k}"] = sum(get(f"{n_}.ndcg")) / n
            if get(f"{n_}.recall"):
                out[f"{n_}.recall@{k}"] = sum(get(f"{n_}.recall")) / n
            nd = [p[f"{n_}.ndcg"] / p[f"{n_}.n"] for p in parts if p.get(f"{n_}.n")]
            out[f"{n_}.ndcg@{k}_p10"], out[f"{n_}.ndcg@{k}_p90"] = percentiles(nd)
        return out

    @property
    def row_spec(self):  # the cut-off k is the instance's
        k = self.k
        return ((f"hr@{k}", f"HR@{k}"), (f"recall@{k}", f"Recall@{k}"), (f"ndcg@{k}", f"NDCG@{k}"),
                (f"ndcg@{k}_p10", f"NDCG@{k} p10 (worst 10% of clients)"))

    @property
    def log_spec(self):
        return (f"hr@{self.k}", f"recall@{self.k}", f"ndcg@{self.k}")

    @property
    def headline_spec(self):
        return f"ndcg@{self.k}", True
