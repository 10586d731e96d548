"""exchange=sparse under client-level DP (privacy=client_clip_dp, secagg_dp): row-wise
averaging from one noised mean. Flower-free: the client's encoding and the server's decoding.

Row-wise averaging moves each item row by the mean update of the clients that sent it:
it needs, per row, the sum of those updates and how many sent it. Under DP both sums are
released noised, as one Gaussian mechanism on one vector per client:

    client i sends  v_i = [u_i clipped to C * sqrt(1 - s) ;  g * 1[row r in i's row set]]
    with g = C * sqrt(s / R) and at most R rows (the R with the largest update kept),

so ||v_i|| <= C whatever the client's data: the DP modes' own clipping (Flower's
fixedclipping_mod on the reply minus what was sent; the server sends the indicator
array as zeros) finds it already within C, and the noise z * C that the mode adds to the
sum (client_clip_dp: the server, on the mean; secagg_dp: each client's share, inside
SecAgg+) covers the update and the row counts together, at the mode's epsilon: one
release per round, as before. `s` (privacy.count_share) splits C^2 between update and
count; R (privacy.max_rows) bounds the count's sensitivity to sqrt(R) rows. k
(privacy.row_scale) multiplies the row tables' part of u_i before the clipping, and the
server divides the released row means by k: rows then take a larger share of C (their
noise, relative to their signal, is divided by up to k) and every other array a smaller
one. Scaling a client's own vector before it is clipped and undoing it after the release
are both outside the Gaussian mechanism on the clipped vectors: epsilon does not change.

The server decodes the released mean (post-processing, no privacy cost):
    count_r = m * mean[indicator]_r / g            (noise std z * C / g = z * sqrt(R / s))
    row r  += m * mean update_r / max(smoothed count_r, min_row_count)
where the count is smoothed by its running mean over the rounds (a row's count is the
same expected number every round under a fixed population, and averaging T noised
releases divides the noise by sqrt(T) at no cost in epsilon), and the floor (privacy.min_row_count; null:
FLOOR_STDS standard deviations of the smoothed count's noise) keeps rows whose (noised)
count is small from dividing the noise by a small number. Every
other shared array moves by the mean update, as under dense exchange.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .config_types import RunConfig
from .knob_names import CLIENT_DP_MODES
from .sparse_codec import ROW_COUNT, layout, unpack

FLOOR_STDS = 2.0  # min_row_count=null: the floor is this many noise stds of a row's count estimate


def enabled(cfg: RunConfig) -> bool:
    """Whether this run sends DP row updates: exchange=sparse under client_clip_dp / secagg_dp."""
    return cfg["exchange"]["name"] == "sparse" and cfg["privacy"]["name"] in CLIENT_DP_MODES


@dataclass(frozen=True)
class Budget:
    """How a client's clipping norm C is split between its update and its row indicator."""

    clip: float  # C: the bound of the whole vector (privacy.clipping_norm)
    max_rows: int  # R: rows a client may count (privacy.max_rows)
    count_share: float  # s: the share of C^2 the indicator may take (privacy.count_share)
    min_row_count: float | None  # the server's floor on a row's estimated count; None: FLOOR_STDS of its noise
    row_scale: float = 1.0  # k: the client multiplies its row updates by k before clipping, the server divides by k

    @classmethod
    def of(cls, cfg: RunConfig) -> "Budget":
        p = cfg["privacy"]
        floor = p.get("min_row_count")
        return cls(float(p["clipping_norm"]), int(p["max_rows"]), float(p["count_share"]),
                   float(floor) if floor is not None else None, float(p.get("row_scale", 1.0)))

    @property
    def gamma(self) -> float:
        """The indicator's value on a counted row."""
        return self.clip * math.sqrt(self.count_share / self.max_rows)

    @property
    def update_clip(self) -> float:
        """The bound on the update part."""
        return self.clip * math.sqrt(1.0 - self.count_share)

    def count_std(self, noise_multiplier: float) -> float:
        """The std of one round's count estimate of a row: z * C / gamma."""
        return noise_multiplier * self.clip / self.gamma

    def floor(self, noise_multiplier: float, rounds: int) -> float:
        """The least count a row's update is divided by: min_row_count, or FLOOR_STDS standard
        deviations of the noise on the running mean of `rounds` counts (and at least 1)."""
        if self.min_row_count is not None:
            return self.min_row_count
        return max(1.0, FLOOR_STDS * self.count_std(noise_multiplier) / math.sqrt(max(rounds, 1)))


def client_upload(payload: dict[str, np.ndarray], received: dict[str, np.ndarray], budget: Budget
                  ) -> dict[str, np.ndarray]:
    """What a client sends under DP rows, from its packed sparse upload (sparse_codec) and the
    arrays it received: every shared array at full size, received + its clipped update (row
    tables: only the kept rows move), and ROW_COUNT: gamma on the kept rows, 0 elsewhere.
    The L2 norm of (sent - received) over all of it is at most budget.clip."""
    shapes = {k: v.shape for k, v in without_indicator(received).items()}
    rows, upd = unpack(payload, shapes)
    _, row_names = layout(shapes)
    if len(rows) > budget.max_rows:  # keep the R rows whose update is largest (ties: the earlier row)
        norms = sum((upd[n].reshape(len(rows), -1) ** 2).sum(axis=1) for n in row_names)
        keep = np.sort(np.argsort(-norms, kind="stable")[:budget.max_rows])
        rows, upd = rows[keep], {n: (v[keep] if n in row_names else v) for n, v in upd.items()}
    if budget.row_scale != 1.0:  # the rows' share of the clipped norm (the server divides it out)
        upd = {n: (v * budget.row_scale if n in row_names else v) for n, v in upd.items()}
    total = math.sqrt(sum(float((np.asarray(v, np.float64) ** 2).sum()) for v in upd.values()))
    factor = min(1.0, budget.update_clip / total) if total > 0 else 1.0
    out = {}
    for name, shape in shapes.items():
        base = np.asarray(received[name])
        if name in row_names:  # only the kept rows move: the rest is the received table as it is
            new = base.copy()
            new[rows] = base[rows].astype(np.float64) + upd[name] * factor
        else:
            new = np.asarray(base.astype(np.float64) + upd[name].reshape(shape) * factor, dtype=base.dtype)
        out[name] = new
    indicator = zero_indicator(shapes)
    indicator[rows] = budget.gamma
    out[ROW_COUNT] = indicator
    return out


def without_indicator(arrays: dict) -> dict:
    """The shared arrays a client received, without ROW_COUNT (the indicator's zeros a DP-rows
    round sends beside them)."""
    return {k: v for k, v in arrays.items() if k != ROW_COUNT}


def zero_indicator(shapes: dict[str, tuple]) -> np.ndarray:
    """ROW_COUNT as a DP-rows training round sends it: zeros, one per row of the row tables
    (the clients' clipping then measures the indicator as part of the update)."""
    _, row_names = layout(shapes)
    return np.zeros(max((tuple(shapes[n])[0] for n in row_names), default=0), np.float32)


class RowCounts:
    """The server's running estimate of each row's count per round: the mean of the noised
    counts released so far (post-processing of the releases)."""

    def __init__(self):
        self.total: np.ndarray | None = None
        self.rounds = 0

    def update(self, noisy: np.ndarray) -> np.ndarray:
        self.total = noisy.astype(np.float64) if self.total is None else self.total + noisy
        self.rounds += 1
        return self.total / self.rounds

    def state_dict(self) -> dict:
        return {"total": None if self.total is None else self.total.tolist(), "rounds": self.rounds}

    def load_state_dict(self, state: dict) -> None:
        self.total = None if state.get("total") is None else np.asarray(state["total"], np.float64)
        self.rounds = int(state.get("rounds", 0))


def server_update(current: dict[str, np.ndarray], mean: dict[str, np.ndarray], answered: int, budget: Budget,
                  counts: RowCounts, noise_multiplier: float, std_out: dict | None = None
                  ) -> tuple[dict[str, np.ndarray], dict]:
    """The new shared arrays from the released (noised) mean of the clients' `client_upload`s
    over `answered` clients (noise multiplier z of the release), and a summary for metrics.jsonl.
    `std_out` (a dict, filled): each array's noise std in the new arrays' move, z * C / answered,
    on a row table's row z * C / (k * divisor of the row), a column to broadcast (public: z, C
    and the released counts)."""
    _, row_names = layout(current)
    noisy = answered * np.asarray(mean[ROW_COUNT], np.float64) / budget.gamma
    est = counts.update(noisy)
    floor = budget.floor(noise_multiplier, counts.rounds)
    denom = np.maximum(est, floor)
    out = {}
    for name, cur in current.items():
        upd = np.asarray(mean[name], np.float64) - cur.astype(np.float64)
        if name in row_names:
            upd = upd * (answered / denom / budget.row_scale).reshape(-1, *[1] * (cur.ndim - 1))
        out[name] = np.asarray(cur.astype(np.float64) + upd, dtype=cur.dtype)
    if std_out is not None:
        std = noise_multiplier * budget.clip / answered
        for name, cur in current.items():
            std_out[name] = ((std * answered / denom / budget.row_scale).reshape(-1, *[1] * (cur.ndim - 1))
                             if name in row_names else std)
    info = {"count_rounds": counts.rounds, "count_median": float(np.median(est)), "count_floor": floor,
            "rows_at_floor": int((est < floor).sum())}
    return out, info
