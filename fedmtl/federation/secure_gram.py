"""click_mix under privacy=secagg / secagg_dp: the item Gram (and, with click_mix.seq_weight,
the windowed Gram after it) as a secure sum, one chunk of an upper triangle per SecAgg+ round. The server's side is `SecureGram` (a SecAggRound, run
before round 1); a client answers a chunk request with `answer_chunk` (LegacyFitMod passes
the request on)."""

from __future__ import annotations

import logging
import math
import time

import numpy as np
from flwr.app import Context, Message
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.compat.common import recorddict_compat as compat

from .. import itemitem, secure_random
from ..config_types import RunConfig
from ..progress import progress
from .secagg_round import SecAggRound, legacy_sample

GRAM_KEY = "fedmtl-gram"  # a FitIns config key: "k/K", the chunk of the Gram's upper triangle asked for


def chunk_size(cfg: RunConfig) -> int:
    """Values per chunk: the server holds every client's masked chunk at once, 8 bytes a value, in
    about click_mix.secure_gram_mb. Each chunk is a whole SecAgg+ run, whose key agreement and
    secret sharing cost about 12 s at 943 clients whatever its length: at MovieLens-100k's 943
    clients the default 2048 makes 5 chunks, 130 s for the Gram and 2.5 GB peak RSS, against 11
    chunks of 2^17 values (about 1 GB), 200 s and 1.4 GB before the knob. Server and clients
    compute it from the same run config."""
    budget = float(cfg["click_mix"]["secure_gram_mb"]) * 2**20
    return max(1, int(budget // (8 * max(1, int(cfg["num_clients"])))))


def gram_chunks(n_items: int, parts: int, size: int) -> int:
    """Chunks of the secure sum: each part's upper triangle in slices of `size` values, part after part."""
    return parts * -(-(n_items * (n_items + 1) // 2) // size)


def part_names(cfg: RunConfig) -> list[str]:
    """The parts summed: the Gram's "block", and "window" (itemitem.gram_parts) with a sequence score."""
    return ["block", "window"] if itemitem.seq_active(cfg) else ["block"]


_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def triu_chunk(n_items: int, k: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the k-th slice of `size` values of the n x n upper triangle (row major)."""
    if n_items not in _TRIU:
        _TRIU.clear()
        _TRIU[n_items] = tuple(a.astype(np.int32) for a in np.triu_indices(n_items))
    r, c = _TRIU[n_items]
    lo = k * size
    return r[lo:lo + size], c[lo:lo + size]


def gram_share_std(cfg: RunConfig) -> float:
    """secagg_dp: the std of each client's share of the DP Gram's noise, z * dp_clip / sqrt(N)
    (every one of the N clients sends every chunk: the sum holds N(0, (z * dp_clip)^2))."""
    mix = cfg["click_mix"]
    return float(mix["dp_noise_multiplier"]) * float(mix["dp_clip"]) / math.sqrt(cfg["num_clients"])


def gram_chunk_of(cfg: RunConfig, data, n_items: int, k: int, chunks: int, clip: float | None = None) -> np.ndarray:
    """This client's Gram parts (its users' item co-occurrence counts; with a sequence score, the
    windowed ones after them) at the k-th chunk, as float64 (small integers: SecAgg+ sums them
    exactly); with `clip`, the parts scaled to a joint Frobenius norm <= clip first
    (itemitem.clip_parts: the DP Gram)."""
    items, parts = itemitem.gram_parts(cfg, data)
    if clip is not None:
        parts = itemitem.clip_parts(parts, clip)
    per = chunks // len(parts)
    r, c = triu_chunk(n_items, k % per, chunk_size(cfg))
    return chunk_values(n_items, np.asarray(items), parts[part_names(cfg)[k // per]], r, c)


def chunk_values(n_items: int, items: np.ndarray, part: np.ndarray, r: np.ndarray, c: np.ndarray) -> np.ndarray:
    """The n_items x n_items matrix that is `part` on items x items and 0 elsewhere, held in float32,
    at the positions (r, c), as float64: read from the part itself, without making the whole matrix
    for each client and chunk (0.7 ms against 1.0 ms a chunk at MovieLens-100k; the secure Gram's
    wall time, about 200 s, is Flower's SecAgg+ stages)."""
    pos = np.full(n_items, -1, np.int64)
    pos[items] = np.arange(len(items))
    pr, pc = pos[r], pos[c]
    on = (pr >= 0) & (pc >= 0)
    out = np.zeros(len(r))
    out[on] = np.asarray(part).astype(np.float32)[pr[on], pc[on]]
    return out


def answer_chunk(msg: Message, ctx: Context, spec: str) -> Message:
    """A client's answer to a request for chunk `spec` ("k/K") of its Gram part (LegacyFitMod
    passes it on): the chunk as a FitRes, for secaggplus_mod to mask; refused below a
    privacy floor with gram=false."""
    from ..errors import PrivacyRefused
    from .deployed import node_data

    from ..privacy_floor import CURRENT_CLIENT

    cfg, floor = CURRENT_CLIENT.get()
    if cfg is None:
        raise ValueError("secure item Gram: asked outside the train handler's privacy mod")
    if floor is not None and not floor.gram:
        raise PrivacyRefused("fedmtl refused: item Gram (secure sum): this client does not send its part "
                             "(gram=false)")
    k, chunks = (int(x) for x in spec.split("/"))
    _, data = node_data(cfg, ctx)
    n_items = int(data.n_items) if hasattr(data, "n_items") else int(data.train_mask().shape[1])
    if not (0 <= k < chunks == gram_chunks(n_items, len(part_names(cfg)), chunk_size(cfg))):
        raise ValueError(f"secure item Gram: chunk {spec} does not fit {n_items} items")
    if itemitem.dp_gram(cfg):  # secagg_dp: the chunk of the clipped part, plus this client's share of the noise
        chunk = gram_chunk_of(cfg, data, n_items, k, chunks, float(cfg["click_mix"]["dp_clip"]))
        chunk += secure_random.gaussian(chunk.shape, gram_share_std(cfg))
    else:
        chunk = gram_chunk_of(cfg, data, n_items, k, chunks)
    fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([chunk]), 1, {})
    return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


class SecureGram(SecAggRound):
    """click_mix's item Gram under privacy=secagg: the clients' parts summed by SecAgg+, one
    chunk of the upper triangle per SecAgg+ round (before round 1), so the server learns the
    sum over all clients and no client's items. Every value is a small integer count: with
    clipping_range a power of two at least the largest client's user count and weight 1,
    SecAgg+'s quantisation is exact, and the sum is the same matrix the parts in the clear add
    up to. The clients then get the whole of EASE's B once (the server does not know whose
    rows are whose) and keep their own rows (server_app.ItemItem)."""

    def __init__(self, cfg: RunConfig):
        from flwr.server.client_manager import SimpleClientManager

        from ..data import federation_meta

        meta = federation_meta(cfg)
        self.cfg, self.tasks, self.names, self.rows = cfg, [], ["gram"], None
        self.n_items = int(meta["n_items"])
        self.parts = part_names(cfg)
        self.size = chunk_size(cfg)
        self.chunks = gram_chunks(self.n_items, len(self.parts), self.size)
        users = meta["max_users"]
        self.clip = float(2 ** max(0, int(np.ceil(np.log2(max(users, 1))))))  # a count never exceeds it
        self.dp = itemitem.dp_gram(cfg)
        if self.dp:  # secagg_dp: a clipped part's entry is <= dp_clip; its noise share stays within 8 stds
            bound = float(cfg["click_mix"]["dp_clip"]) + 8 * gram_share_std(cfg)
            self.clip = float(2 ** max(0, int(np.ceil(np.log2(bound)))))
        self.k = 0
        self._setup(dict(legacy_sample(cfg), fraction_fit=1.0), 1.0, self.clip, SimpleClientManager())  # everyone

    def _fit_config(self, rnd: int) -> dict:
        return {"server-round": 0, GRAM_KEY: f"{self.k}/{self.chunks}"}

    def gram(self, grid) -> tuple[tuple[np.ndarray, np.ndarray | None], int, int]:
        """((the summed Gram, the summed windowed Gram or None), bytes up, clients summed);
        RoundFailure when a chunk is not aggregated."""
        from .failures import RoundFailure

        sums = [np.zeros((self.n_items, self.n_items), np.float64) for _ in self.parts]
        per = self.chunks // len(self.parts)
        up, summed, t0 = 0, set(), time.time()
        log = logging.getLogger("fedmtl")
        for k in range(self.chunks):
            self.k = k
            sent, got, counting = self._run(0, [np.zeros(1)], grid)  # the clients send their chunk, not this
            up += counting.up
            if got is sent:
                raise RoundFailure(f"secure item Gram: chunk {k + 1} of {self.chunks} not aggregated "
                                   f"({self._halt_reason(counting, counting.counts())})")
            m = self.workflow.last_release["active"]
            summed.add(m)
            mean = parameters_to_ndarrays(compat.arrayrecord_to_parameters(got, keep_input=True))[0]
            r, c = triu_chunk(self.n_items, k % per, self.size)
            total = np.asarray(mean, np.float64).ravel() * m
            sums[k // per][r, c] = total if self.dp else np.rint(total)  # DP: noised, no longer whole counts
            # each chunk is a whole SecAgg+ run (about 20 s at 943 clients and the default chunk
            # size): one line each, so a secure Gram of minutes shows where it is
            log.info("%s  %s of %d clients, %.1f MB up", progress("secure item Gram: chunk", k + 1, self.chunks, t0),
                     self.parts[k // per], m, counting.up / 1e6)
        sums = [np.triu(g) + np.triu(g, 1).T for g in sums]
        if len(summed) > 1:
            log.warning("secure item Gram: chunks summed %s clients (dropouts between chunks)", sorted(summed))
        return (sums[0], sums[1] if len(sums) > 1 else None), up, min(summed)
