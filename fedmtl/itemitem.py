"""Item-item click scores (EASE, Steck 2019) blended into the click ranking.

The click head ranks items by a softmax over the user's embedding; a closed-form
item-item model ranks them by the items the user already has. The two err differently,
and a blend of the two ranks better than either (docs/quality.md, seventh round).

    G = sum over users of x_u x_u^T     (x_u: the 0/1 vector of the user's train items)
    B = argmin ||X - X B||^2 + lam ||B||^2  subject to diag(B) = 0
      = -P / diag(P) with P = (G + lam I)^-1, diagonal set to 0
    score_u = (1 - w) z(click logits of u) + w z(x_u B)

`z` standardises one user's scores over their candidate items (the items not in their
train part, the ones ranked). G is a sum of per-user parts, so it federates as a sum:
each client computes its users' part (`gram_part`), the server adds the parts
(`add_part`), solves for B (`ease`) and sends each client the rows of B for the items
its users have (`Rows`: x_u B needs no others) with the evaluation messages; each client
then scores its own users (`blend`). Centralised and local-only runs build G from the
data they train on (`gram`), so the three settings share this code.

Sequence (`click_mix.seq_weight` > 0): a user's next item is often one that other users had
close to the user's latest ones. The windowed Gram counts, for each pair of different items,
the users who had both within `seq_window` events (baskets) of each other:

    W = sum over users of w_u,  w_u[i, j] = 1 if i != j are within seq_window steps in u's train history
    S = W / sqrt((c + 1)(c + 1)^T)     (c: diag(G), each item's user count)
    h_u[i] = seq_decay ** age  for the user's seq_last latest items (age 0: the latest)
    score_u = (1 - w) z(click logits) + w z(x_u B) + w_seq z(h_u S)

W is a sum of per-user 0/1 parts like G (`sequence.window_part`), so it federates the same
way, in the clear or through SecAgg+, beside G; a client reads only the rows of S for its own
items. The sequence maths (h_u, W's part, S) is in fedmtl/sequence.py.

`click_mix.grid_weight` x `click_mix.grid_lam` (`grid`) scores every blend of that grid in
the final evaluation besides the run's own, as metric groups `mix_w<w>_lam<lam>/click.*`:
training does not depend on the blend, so one validation run per seed is the whole
selection (`python -m fedmtl.report FOLDER --select --by click.ndcg@10`).

Everything here is plain numpy and torch (no Flower): fedmtl's core.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np
import torch

from .config_types import RunConfig
from .checks import block, get, number
from .errors import ConfigError
from .knob_names import CLIENT_DP_MODES  # click_mix's Gram under DP: clipped parts, noised sum
from .jobs import run_jobs
from .tasks import ranking_tasks
from .sequence import Seq, history, seq_matrix, window_part

GRID_PREFIX = "mix_"  # metric groups of the selection grid: mix_w0.1_lam300/click.ndcg@10


def active(cfg: RunConfig) -> bool:
    """Whether a run blends item-item scores into click (click_mix.weight > 0 and a click task)."""
    return float(cfg["click_mix"]["weight"]) > 0 and bool(ranking_tasks(cfg["tasks"]))


def grid(cfg: RunConfig) -> list[tuple[str, float, float]]:
    """(metric group, weight, lam) of every blend of the selection grid (empty: no grid)."""
    mix = cfg["click_mix"]
    if not ranking_tasks(cfg["tasks"]):
        return []
    return [(grid_name(float(w), float(lam)), float(w), float(lam)) for lam in mix["grid_lam"] for w in mix["grid_weight"]]


def grid_name(weight: float, lam: float) -> str:
    return f"{GRID_PREFIX}w{weight:g}_lam{lam:g}"


def grid_overrides(name: str) -> str:
    """`grid_name`'s inverse as overrides: mix_w0.1_lam300 -> click_mix.weight=0.1 click_mix.lam=300
    (what makes that blend a run's own)."""
    w, lam = name[len(GRID_PREFIX) + 1:].split("_lam")
    return f"click_mix.weight={w} click_mix.lam={lam}"


def needed(cfg: RunConfig) -> bool:
    """Whether the run needs the item Gram (a blend, or a selection grid)."""
    return active(cfg) or bool(grid(cfg))


def grid_lams(cfg: RunConfig) -> list[float]:
    return sorted({lam for _, _, lam in grid(cfg)})


def seq_active(cfg: RunConfig) -> bool:
    """Whether the run's blends add the sequence score (click_mix.seq_weight > 0)."""
    return needed(cfg) and float(cfg["click_mix"]["seq_weight"]) > 0


@dataclass(frozen=True)
class RowsOf:
    """Rows `items` of `matrix`, not taken yet: what the server attaches to an evaluation message
    (federation/arrays.py makes it an Array of `matrix[items]` only when read). In one process
    the cohort engine evaluates every message whose rows come from one matrix with that matrix."""

    matrix: np.ndarray
    items: np.ndarray

    def take(self) -> np.ndarray:
        return self.matrix[self.items]


@dataclass
class Rows:
    """The rows of EASE's B for `items`: all that x_u B needs for users whose train items are
    among them (the server sends each client these rows, not the whole n_items^2 matrix)."""

    items: torch.Tensor  # (k,) int64
    rows: torch.Tensor  # (k, n_items)
    sparse: bool = False  # x B as a sparse product (many users, each with few of the items: a cohort's)

    @classmethod
    def of(cls, b: np.ndarray, items: np.ndarray | None = None, device=None) -> "Rows":
        items = np.arange(b.shape[0]) if items is None else np.asarray(items, dtype=np.int64)
        return cls(torch.from_numpy(items.astype(np.int64)).to(device),
                   torch.from_numpy(np.ascontiguousarray(b[items])).to(device))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """x B for each row x of `x` (users x n_items: the 0/1 train mask, or a history h whose
        nonzero items are train items)."""
        sub = x[:, self.items.to(x.device)]
        if int((sub != 0).sum()) != int((x != 0).sum()):
            raise ValueError(f"item-item rows for {len(self.items)} items miss items these users have in train")
        sub = sub.to(self.rows.dtype)
        if self.sparse:
            return torch.sparse.mm(sub.to_sparse(), self.rows.to(x.device))
        return sub @ self.rows.to(x.device)


def gram_part(train_mask: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """(items, block): the items these users have in train and their co-occurrence counts
    (block[a, b] = how many of the users have both items[a] and items[b])."""
    x = train_mask.to("cpu", torch.float32)
    items = torch.nonzero(x.any(dim=0)).flatten()
    xs = x[:, items]
    return items.numpy().astype(np.int64), (xs.T @ xs).numpy()


def dp_gram(cfg: RunConfig) -> bool:
    """Whether this run's item Gram is released under DP (a DP mode that takes click_mix)."""
    return cfg["privacy"]["name"] in CLIENT_DP_MODES


def clip_part(block: np.ndarray, clip: float) -> np.ndarray:
    """A client's Gram part scaled to Frobenius norm <= `clip` (click_mix.dp_clip): the most one
    client adds to the Gram, whatever its data; the sum then takes N(0, (z * clip)^2) on each
    entry of its upper triangle (the upper triangle's norm is at most the whole part's)."""
    return clip_parts({"block": block}, clip)["block"]


def gram_parts(cfg: RunConfig, data) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(items, {"block": its Gram part, "window": its windowed Gram part when the run has a
    sequence score}): what a client sends for click_mix, both over the same items."""
    items, block = gram_part(data.train_mask())
    parts = {"block": block}
    if seq_active(cfg):
        parts["window"] = window_part(data.train_u, data.train_i, data.train_age, items,
                                      int(cfg["click_mix"]["seq_window"]))
    return items, parts


def clip_parts(parts: dict[str, np.ndarray], clip: float) -> dict[str, np.ndarray]:
    """`clip_part` over the parts together: their joint Frobenius norm <= clip, so that one
    client moves the released pair (G, W) by at most clip (one DP release, accounted as one)."""
    # float64: a float32 sum errs by more than 1e-5; 1 - 1e-6: inside the bound after rounding
    norm = float(np.sqrt(sum(np.sum(np.asarray(v, np.float64) ** 2) for v in parts.values())))
    if norm <= clip:
        return parts
    return {k: (np.asarray(v, np.float64) * (clip * (1 - 1e-6) / norm)).astype(v.dtype) for k, v in parts.items()}


def add_part(gram: np.ndarray, items: np.ndarray, block: np.ndarray) -> None:
    """Add one part (from `gram_part`) into the full n_items x n_items Gram matrix, in place."""
    items = np.asarray(items, dtype=np.int64)
    block = np.asarray(block, dtype=gram.dtype)
    _check_part(gram, items, block)
    gram[np.ix_(items, items)] += block


def _check_part(gram: np.ndarray, items: np.ndarray, block: np.ndarray) -> None:
    if items.ndim != 1 or block.shape != (len(items), len(items)):
        raise ValueError(f"a Gram part needs items (k,) and block (k, k), got {items.shape} and {block.shape}")
    if len(items) and (items.min() < 0 or items.max() >= gram.shape[0]):
        raise ValueError(f"a Gram part names item {int(items.max())}, outside 0..{gram.shape[0] - 1}")


def add_parts(gram: np.ndarray, parts: list[tuple[np.ndarray, np.ndarray]], parallel: bool = False) -> None:
    """`add_part` of every (items, block) into `gram`, in place, one part after another. parallel:
    the Gram's rows in bands, each band's rows of every part added by one job, the jobs shared by
    two threads (jobs.run_jobs; no entry written by two jobs, NumPy's indexing lets go of
    the GIL), for sums that are the same in any order (whole counts in float32: the server's Gram
    in the clear)."""
    parts = [(np.asarray(items, dtype=np.int64), np.asarray(block, dtype=gram.dtype)) for items, block in parts]
    for items, block in parts:  # every part checked before any is added
        _check_part(gram, items, block)
    if not parallel:
        for items, block in parts:
            gram[np.ix_(items, items)] += block
        return
    edges = np.linspace(0, gram.shape[0], 5).astype(np.int64)  # 4 bands: the two threads take them in turn

    def band(lo: int, hi: int, _slot: int) -> None:
        for items, block in parts:
            mine = (items >= lo) & (items < hi)  # (a part's items in any order)
            if mine.any():
                gram[np.ix_(items[mine], items)] += block[mine]

    run_jobs([functools.partial(band, int(lo), int(hi)) for lo, hi in zip(edges[:-1], edges[1:])], True)


def gram(train_mask: torch.Tensor) -> np.ndarray:
    """The Gram matrix of these users alone (centralised: all of them; local-only: one client's)."""
    n = train_mask.shape[1]
    g = np.zeros((n, n), dtype=np.float64)
    add_part(g, *gram_part(train_mask))
    return g


def rows_of_part(items: np.ndarray, block: np.ndarray, n_items: int, lam: float, device=None) -> "Rows":
    """B's rows for `items`, B being `ease` of the Gram matrix that is `block` on items x items
    and 0 elsewhere, solved on the block alone: G + lam I is block-diagonal there, so B is 0
    outside the block. One user's B (local-only) costs a k x k solve, not an n_items^2 one."""
    r = np.zeros((len(items), n_items), dtype=np.float32)
    r[:, items] = ease(block, lam)
    return Rows(torch.from_numpy(np.asarray(items, dtype=np.int64)).to(device), torch.from_numpy(r).to(device))


def ease(gram_matrix: np.ndarray, lam: float) -> np.ndarray:
    """EASE's item-item weights B from the Gram matrix (float32, zero diagonal)."""
    if lam <= 0:
        raise ValueError(f"click_mix.lam must be > 0, got {lam}")
    g = np.array(gram_matrix, dtype=np.float64)
    g[np.diag_indices_from(g)] += lam
    p = np.linalg.inv(g)
    # the same quotients as -p / diag(p) (IEEE division is sign-symmetric), with the divisors one
    # contiguous row: divided by the strided diagonal view it took 0.55 s at 3,705 items, this 0.03 s
    b = np.divide(p, -np.diag(p))
    np.fill_diagonal(b, 0.0)
    return b.astype(np.float32)


def standardise(scores: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each row's scores minus its mean, over its std, both taken over the unmasked items
    (masked items: 0). Rows with no spread come out 0."""
    keep = (~mask).to(scores.dtype)
    n = keep.sum(dim=1, keepdim=True).clamp_min(1.0)
    mean = (scores * keep).sum(dim=1, keepdim=True) / n
    var = (((scores - mean) * keep) ** 2).sum(dim=1, keepdim=True) / n
    return (scores - mean) / var.sqrt().clamp_min(1e-12) * keep


def blend(scores: torch.Tensor, mask: torch.Tensor, b: Rows, weight: float) -> torch.Tensor:
    """Click scores blended with item-item scores: (1 - w) z(scores) + w z(x B), x = mask."""
    return blended(scores, mask, {"": (b, weight)})[""]


def blended(scores: torch.Tensor, mask: torch.Tensor, mixes: dict, hist: torch.Tensor | None = None) -> dict:
    """`blend` for each {name: (Rows, weight)} or {name: (Rows, weight, Seq)} of `mixes`:
    z(scores) once, z(x B) once per Rows (the blends of a grid share one Rows per lam), and
    with a Seq, + seq.weight z(h S) (hist: the users' h, `history`)."""
    out, z_ii, z_head = {}, {}, None
    for name, (b, weight, *seq) in mixes.items():
        if id(b) not in z_ii:
            z_ii[id(b)] = standardise(b.scores(mask), mask)
        if z_head is None:
            z_head = standardise(scores.to(z_ii[id(b)].dtype), mask)
        out[name] = (1.0 - weight) * z_head + weight * z_ii[id(b)]
        if seq and seq[0] is not None:
            if hist is None:
                raise ValueError("a blend with a sequence score needs the users' history (itemitem.history)")
            if id(seq[0].rows) not in z_ii:
                z_ii[id(seq[0].rows)] = standardise(seq[0].rows.scores(hist), mask)
            out[name] = out[name] + seq[0].weight * z_ii[id(seq[0].rows)]
    return out


def seq_history(mixes: dict, data) -> torch.Tensor | None:
    """The users' h for the first Seq among `mixes`' blends (they share one), or None."""
    seq = next((m[2] for m in mixes.values() if m is not None and len(m) > 2 and m[2] is not None), None)
    if seq is None:
        return None
    return history(data.train_u, data.train_i, data.train_age, len(data.users), data.n_items, seq.last, seq.decay)


def seq_of(cfg: RunConfig, rows: Rows | None) -> Seq | None:
    """The run's Seq from S's rows (None: no sequence score)."""
    if rows is None or not seq_active(cfg):
        return None
    mix = cfg["click_mix"]
    return Seq(rows, float(mix["seq_weight"]), int(mix["seq_last"]), float(mix["seq_decay"]))


def blends(cfg: RunConfig, own: Rows | None, grid_rows: dict[float, Rows], seq_rows: Rows | None = None):
    """(the run's own blend or None, {grid group: blend}), a blend being (B's rows, weight, Seq
    or None) as `train.evaluate` takes them; own: B's rows at click_mix.lam, grid_rows: at each
    grid lam (final evaluation only); seq_rows: S's rows (every blend adds the run's sequence score)."""
    seq = seq_of(cfg, seq_rows)
    mine = (own, float(cfg["click_mix"]["weight"]), seq) if active(cfg) and own is not None else None
    return mine, {name: (grid_rows[lam], w, seq) for name, w, lam in grid(cfg) if lam in grid_rows}


def pooled(cfg: RunConfig, data):
    """`blends` from these users' own Gram matrix (centralised or local-only runs)."""
    if not needed(cfg):
        return None, {}
    train_mask = data.train_mask()
    items, block = gram_part(train_mask)
    seq_rows = None
    if seq_active(cfg):
        window = window_part(data.train_u, data.train_i, data.train_age, items, int(cfg["click_mix"]["seq_window"]))
        s = np.zeros((len(items), train_mask.shape[1]), np.float32)
        s[:, items] = seq_matrix(window, block)
        seq_rows = Rows(torch.from_numpy(np.asarray(items, np.int64)).to(train_mask.device),
                        torch.from_numpy(s).to(train_mask.device))
    own, grid_rows = solve_each(cfg, lambda lam: rows_of_part(items, block, train_mask.shape[1], lam,
                                                              train_mask.device))
    return blends(cfg, own, grid_rows, seq_rows)


def solve_each(cfg: RunConfig, solve):
    """(solve(click_mix.lam) when the run blends, else None; {grid lam: solve(lam)}), each lam
    solved once (the run's own lam is often one of the grid's)."""
    own = float(cfg["click_mix"]["lam"]) if active(cfg) else None
    done = {lam: solve(lam) for lam in sorted({*grid_lams(cfg), *([] if own is None else [own])})}
    return (None if own is None else done[own]), {lam: done[lam] for lam in grid_lams(cfg)}


def check_config(cfg: dict) -> None:
    """click_mix.weight, .lam, the DP Gram's knobs and the selection grid: called by
    `fedmtl.config.validate`."""
    mix = block(cfg, "click_mix")
    number(cfg, "click_mix.weight", lo=0, hi=1, hi_open=True)
    number(cfg, "click_mix.lam", lo=0, lo_open=True)
    number(cfg, "click_mix.dp_clip", lo=0, lo_open=True)
    number(cfg, "click_mix.dp_noise_multiplier", lo=0, lo_open=True)
    number(cfg, "click_mix.secure_gram_mb", lo=0, lo_open=True)
    number(cfg, "click_mix.seq_weight", lo=0)
    number(cfg, "click_mix.seq_window", lo=1, integer=True)
    number(cfg, "click_mix.seq_last", lo=1, integer=True)
    number(cfg, "click_mix.seq_decay", lo=0, hi=1, lo_open=True)
    if mix["seq_weight"] > 0 and mix["weight"] <= 0:
        raise ConfigError(f"click_mix.seq_weight={mix['seq_weight']} rides on the item-item blend: set "
                          "click_mix.weight > 0 too (e.g. 0.1), or click_mix.seq_weight=0")
    for key, ok, want in (("grid_weight", lambda v: 0 <= v < 1, "in [0, 1)"), ("grid_lam", lambda v: v > 0, "> 0")):
        values = mix[key] if mix[key] is not None else []
        if not isinstance(values, (list, tuple)):
            raise ConfigError(f"click_mix.{key}={values!r}: expected a list of numbers, e.g. [0, 0.1, 0.2]")
        for i, v in enumerate(values):
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise ConfigError(f"click_mix.{key}[{i}]={v!r}: expected a number")
            if not ok(v):
                raise ConfigError(f"click_mix.{key}[{i}]={v}: must be {want}")
        mix[key] = list(values)
    if bool(mix["grid_weight"]) != bool(mix["grid_lam"]):
        raise ConfigError("click_mix.grid_weight and click_mix.grid_lam: give both (the grid is their product) "
                          "or neither")
    privacy = get(cfg, "privacy.name")
    if needed(cfg) and cfg["mode"] == "federated" and privacy not in ("none", "secagg", *CLIENT_DP_MODES):
        what = f"click_mix.weight={mix['weight']}" if mix["weight"] > 0 else "click_mix.grid_*"
        raise ConfigError(f"{what} with privacy={privacy}: the clients' item Gram parts are summed in the clear "
                          "(none), by SecAgg+ (secagg), clipped and noised by the server (client_clip_dp) or by "
                          "SecAgg+ with the clients' noise (secagg_dp); set click_mix.weight=0 and no grid")
