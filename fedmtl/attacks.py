"""A curious server's attacks on what it receives: which items a client trained on, and its likes.

Each attack maps one client's upload, as the server decoded it (numpy, no Flower),
to a guess: a set of items (and where it can, a like label per item), and a score
per item (higher = more likely trained on) for a top-k guess of the true size.
`score_guess` compares a guess with the client's true training items.

- `bias_change`: the rating and like columns of `encoder.item_bias` move only for
  items the client rated (their losses touch no other row); the sign of the like
  column's move is the label.
- `row_presence`, `row_norm` (exchange=sparse): the rows a client sent, and how much
  each moved.
- `emb_norm` (exchange=dense): how much each row of `encoder.item_emb` moved.
- `gram_items` (click_mix): the items of a client's item Gram part.
- `masked_bias_change` (SecAgg+): `bias_change` on a masked vector, against the
  column's most common value (the unmasked vector of round 1 holds one value for every
  untouched item, since item biases start at zero).
- `regenerate_gaussian`: the draws NumPy's global RNG gives after `np.random.seed(seed)`
  (how fedmtl seeded Flower's DP noise before issue 24), for subtracting it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TOL = 1e-5  # a move smaller than this is float rounding (of subtracted noise), not training


@dataclass
class Guess:
    items: np.ndarray | None = None  # the guessed item set (None: the attack only ranks)
    scores: np.ndarray | None = None  # one per item, higher = more likely trained on
    likes: dict[int, bool] = field(default_factory=dict)  # item -> guessed like label


def bias_change(delta_bias: np.ndarray, rating_col: int | None, like_col: int | None, tol: float = TOL) -> Guess:
    """Items whose rating or like bias moved by more than `tol`; like = the like column rose
    (or, where it did not move, the rating column rose)."""
    cols = [c for c in (rating_col, like_col) if c is not None]
    if not cols:
        return Guess()
    moved = np.abs(delta_bias[:, cols]).max(axis=1)
    items = np.flatnonzero(moved > tol)
    likes = {}
    for i in items:
        d_like = delta_bias[i, like_col] if like_col is not None else 0.0
        d = d_like if abs(d_like) > tol or rating_col is None else delta_bias[i, rating_col]
        likes[int(i)] = bool(d > 0)
    return Guess(items, moved, likes)


def masked_bias_change(masked_bias: np.ndarray, rating_col: int | None, like_col: int | None,
                       modulus: int = 2**32) -> Guess:
    """`bias_change` on a SecAgg+ masked vector (integers mod `modulus`): an item counts as
    moved where its entry differs from its column's most common value, scored by the ring
    distance to it."""
    cols = [c for c in (rating_col, like_col) if c is not None]
    if not cols:
        return Guess()
    dist = np.zeros(masked_bias.shape[0])
    for c in cols:
        col = masked_bias[:, c].astype(np.int64) % modulus
        values, counts = np.unique(col, return_counts=True)
        d = np.abs(col - values[np.argmax(counts)])
        dist = np.maximum(dist, np.minimum(d, modulus - d))
    return Guess(np.flatnonzero(dist > 0), dist.astype(np.float64))


def emb_norm(delta_emb: np.ndarray, tol: float = TOL) -> Guess:
    """Rows of the item embedding that moved (by more than `tol`), ranked by how far."""
    norm = np.linalg.norm(delta_emb.reshape(delta_emb.shape[0], -1), axis=1)
    return Guess(np.flatnonzero(norm > tol), norm)


def row_presence(rows: np.ndarray, n_items: int) -> Guess:
    """exchange=sparse: every row sent (the client's items and its pad rows)."""
    scores = np.zeros(n_items)
    scores[rows] = 1.0
    return Guess(np.unique(rows), scores)


def row_norm(row_deltas: list[np.ndarray], rows: np.ndarray, n_items: int) -> Guess:
    """exchange=sparse: the rows sent, ranked by the norm of their update over all row tables
    (`row_deltas`: each table's update of the rows sent). Ranks only: pad rows move too."""
    sq = sum((d.reshape(len(rows), -1).astype(np.float64) ** 2).sum(axis=1) for d in row_deltas)
    scores = np.full(n_items, -1.0)
    scores[rows] = np.sqrt(sq)
    return Guess(None, scores)


def gram_items(items: np.ndarray, n_items: int) -> Guess:
    """click_mix: the items a client's Gram part names are its users' training items."""
    scores = np.zeros(n_items)
    scores[items] = 1.0
    return Guess(np.unique(items), scores)


def regenerate_gaussian(seed: int, draws) -> list[np.ndarray]:
    """What `np.random.seed(seed)` then one draw per item of `draws` gives: ("normal", std,
    shape, dtype) as Flower's `add_gaussian_noise_inplace` draws it, ("rand", shape) as its
    SecAgg+ stochastic rounding does (consumed, returned as None)."""
    rng = np.random.RandomState(seed % 2**32)
    out = []
    for d in draws:
        if d[0] == "normal":
            _, std, shape, dtype = d
            out.append(rng.normal(0, std, shape).astype(dtype))
        else:
            rng.rand(*d[1])
            out.append(None)
    return out


def _topk(scores: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """The k highest scores, ties broken at random (not by item id: low MovieLens ids are popular)."""
    order = np.lexsort((rng.random(len(scores)), -scores))
    return order[:k]


def score_guess(guess: Guess, true_items: np.ndarray, true_likes: np.ndarray, n_items: int,
                rng: np.random.Generator) -> dict:
    """One client's figures: precision, recall and exactness of the guessed set, precision of
    the top-k scores at k = the true count, chance precision (the true count / n_items), and
    like-label accuracy on the recovered true items."""
    truth = set(int(i) for i in true_items)
    liked = {int(i): bool(v) for i, v in zip(true_items, true_likes)}
    out = {"n_true": len(truth), "chance": len(truth) / n_items}
    if guess.items is not None:
        g = set(int(i) for i in guess.items)
        hit = g & truth
        out.update(precision=len(hit) / len(g) if g else 0.0, recall=len(hit) / len(truth) if truth else 1.0,
                   exact=float(g == truth), n_guess=len(g))
        labelled = [i for i in hit if i in guess.likes]
        if labelled:
            out["like_acc"] = sum(guess.likes[i] == liked[i] for i in labelled) / len(labelled)
    if guess.scores is not None and truth:
        top = _topk(np.asarray(guess.scores, dtype=np.float64), len(truth), rng)
        out["topk_precision"] = len(truth & set(int(i) for i in top)) / len(truth)
    return out


def summarise(per_client: list[dict]) -> dict:
    """Means over clients (like accuracy over the clients that have one), and the count."""
    out = {"clients": len(per_client)}
    if not per_client:
        return out
    for key in ("precision", "recall", "exact", "topk_precision", "chance", "like_acc", "n_guess", "n_true"):
        vals = [c[key] for c in per_client if key in c]
        if vals:
            out[key] = float(np.mean(vals))
    return out


def noise_fit(observed: list[np.ndarray], regenerated: list[np.ndarray]) -> dict:
    """How much of `observed` the `regenerated` noise explains: the cosine between them, the
    best scale a >= 0 of the regenerated draws (1 when its std was right), and the residual
    ||observed - a regenerated|| / ||observed||: ~0 when the noise was regenerated, ~1 when
    it is independent of the draws (so the std need not be known to tell them apart)."""
    o = np.concatenate([x.astype(np.float64).ravel() for x in observed]) if observed else np.zeros(0)
    r = np.concatenate([x.astype(np.float64).ravel() for x in regenerated]) if regenerated else np.zeros(0)
    no, nr = float(np.linalg.norm(o)), float(np.linalg.norm(r))
    if no == 0 or nr == 0:
        return {"cosine": float("nan"), "scale": float("nan"), "residual": float("nan")}
    dot = float(o @ r)
    a = max(dot / nr ** 2, 0.0)
    return {"cosine": dot / (no * nr), "scale": a, "residual": float(np.linalg.norm(o - a * r)) / no}
