"""A cohort's training round: the knobs the batch does not implement (`unbatched`), the
padded, masked mini-batch loop over each chunk, every client's upload, metrics and state as
client_step.train_client gives them (`train_cohort`), and the round's FLOPs (`round_flops`).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch

from .. import dp_rows
from ..config_types import RunConfig
from ..client_step import PERSONAL, WEIGHTING, RunSetup, train_metrics
from ..model import personal_names, shared_names
from ..sparse_codec import ROW_TABLES, sparse_payloads
from ..tasks import ranking_tasks
from .chunk import Chunk
from .clients import CHUNK_MB, Client, Job, chunks, prepare, prepared_for
from .optim import Optim
from .weighting import BATCHED as BATCHED_WEIGHTINGS, PARAMS as WEIGHTING_PARAMS, ChunkWeighting


def unbatched(cfg: RunConfig) -> list[str]:
    """The knobs of `cfg` the batched step does not implement (empty: it batches every client)."""
    out = []
    faults = cfg["faults"]
    if faults["drop_rate"] or faults["straggler_rate"]:
        out.append("faults.* (injected per-client failures)")
    if cfg["weighting"]["name"] not in BATCHED_WEIGHTINGS:
        out.append(f"weighting={cfg['weighting']['name']} (per-client gradient weighting)")
    m = cfg["model"]
    if m["dropout"]:
        out.append("model.dropout > 0 (per-client dropout masks)")
    if m.get("history"):
        out.append("model.history=true")
    t = cfg["train"]
    if cfg["aggregate"] == "fedrep" and t["click_loss"] == "sampled_softmax" and cfg["exchange"]["name"] == "dense":
        out.append("aggregate=fedrep with train.click_loss=sampled_softmax over exchange=dense (rows drawn per phase)")
    if t.get("weight_decay"):
        out.append("train.weight_decay > 0 (decays rows outside a client's row set)")
    if ranking_tasks(cfg["tasks"]) and t["click_loss"] == "sampled":
        out.append("train.click_loss=sampled (per-client negative draws)")
    if cfg["transfer"]["new_items"]:
        out.append("transfer.new_items > 0 (hidden items)")
    return out


def _train_chunk(setup: RunSetup, chunk: Chunk) -> list[tuple[dict, dict, dict | None]]:
    """Train a chunk; per client (its losses summed over steps, its task weights summed, both dicts
    by task; its learned weighting state, None for fixed weights)."""
    cfg, tcfg, dev = setup.cfg, setup.tcfg, setup.device
    tasks = cfg["tasks"]
    bs = tcfg.batch_size
    clients = chunk.clients
    C = len(clients)
    ns = np.array([c.n for c in clients])
    weighting = ChunkWeighting(setup, chunk)  # before the optimiser: uncertainty's log-variances are parameters
    T = len(tasks)
    steps_max = int(math.ceil(ns.max() / bs))
    width = steps_max * bs
    pad = np.arange(width)[None, :] < ns[:, None]  # [C, width]: a real pair at this place of the epoch's order
    cols = list(clients[0].ty or {})  # an interaction log's label columns, beside the rating column
    tu, pos = (np.zeros((C, width), np.int64) for _ in range(2))
    ys = [np.zeros((C, width), np.float32) for _ in range(1 + len(cols))]
    for k, c in enumerate(clients):
        tu[k, :c.n], pos[k, :c.n], ys[0][k, :c.n] = c.tu, c.pos, c.tr
        for y, col in zip(ys[1:], cols):
            y[k, :c.n] = c.ty[col]
    for perms_of, frozen in _phases(cfg, chunk):  # each a local_train call: a fresh optimiser, its own epochs
        for n, p in chunk.P.items():  # what this phase does not train gets no gradient (local_train's `trainable`)
            p.requires_grad_(n not in frozen)
        opt = Optim(chunk, tcfg)
        trains_shared = any(n not in frozen for n in chunk.shared_names)
        sums, wsum = np.zeros((C, T)), np.zeros((C, T))  # the last phase's, as client_round returns it
        for e in range(len(perms_of(clients[0]))):
            order = np.zeros((C, width), np.int64)  # each client's own permutation of its pairs, padded
            for k, c in enumerate(clients):
                order[k, :c.n] = perms_of(c)[e]
            u_e, il_e, *y_e = (np.where(pad, np.take_along_axis(a, order, 1), 0).astype(a.dtype) for a in (tu, pos, *ys))
            epoch_sums = np.zeros((C, T))
            epoch_steps = np.zeros(C)
            weighting.start_epoch()
            for s in range(steps_max):
                lens = np.clip(ns - s * bs, 0, bs)
                B = int(lens.max())
                if B == 0:
                    break
                cut = slice(s * bs, s * bs + B)
                mask = torch.as_tensor(pad[:, cut], dtype=torch.float32, device=dev)
                counts = torch.as_tensor(lens, dtype=torch.float32, device=dev)
                r = [torch.as_tensor(y[:, cut], device=dev) for y in y_e]
                labels = dict(zip(["rating", *cols], r)) if cols else r[0]  # what ClientData.labels gives
                ls, reg = chunk.losses(*(torch.as_tensor(a[:, cut], device=dev) for a in (u_e, il_e)), labels, mask,
                                       counts)
                on = lens > 0
                opt.zero_grad()
                w = weighting.backward(ls, reg, on, trains_shared)
                opt.step(torch.as_tensor(on, device=dev))
                vals = torch.stack([ls[t].detach() for t in tasks], 1).cpu().numpy().astype(np.float64)
                epoch_sums[on] += vals[on]
                wsum[on] += w[on]
                epoch_steps += on
            weighting.end_epoch(epoch_sums / np.maximum(epoch_steps, 1)[:, None])
            sums += epoch_sums
    return [({t: float(sums[k, j]) for j, t in enumerate(tasks)}, {t: float(wsum[k, j]) for j, t in enumerate(tasks)},
             weighting.state(k)) for k in range(C)]


def _phases(cfg: RunConfig, chunk: Chunk) -> list[tuple]:
    """local_rounds.client_round's local_train calls: [(each client's epoch permutations, the names
    that call does not train)]. fedrep: the personal parameters (head epochs), then the shared ones;
    init.freeze_encoder: everything outside the encoder; otherwise everything. The weighting's own
    parameters (uncertainty, GradNorm) train in every call, as local_train's personal group."""
    if cfg["aggregate"] == "fedrep":
        return [(lambda c: c.head_perms, set(chunk.shared_names)),
                (lambda c: c.perms, {n for n in chunk.names if n not in chunk.shared_names and n not in WEIGHTING_PARAMS})]
    frozen = {n for n in chunk.P if n.startswith("encoder.")} if cfg["init"]["freeze_encoder"] else set()
    return [(lambda c: c.perms, frozen)]


def train_cohort(setup: RunSetup, shared: dict[str, np.ndarray], jobs: list[Job], budget_mb: float = CHUNK_MB,
                 prepared: dict | None = None, on_chunk=None) -> list[tuple[dict, dict, dict]]:
    """Every job's (upload, metrics, new state), as client_step.train_client gives them.
    prepared {(pid, server round): Client}: clients `prepare` gave ahead of the round (engine/cohort.py's
    workers, while the server aggregates), taken where they match a job's client, round and data.
    on_chunk(indices, results): called once a chunk is trained with its jobs' positions in `jobs` and
    their results (engine/cohort.py's workers send those replies while the next chunks train)."""
    cfg, tcfg = setup.cfg, setup.tcfg
    if tcfg.weight_decay or unbatched(cfg):
        raise ValueError(f"train_cohort: this config is not batched ({'; '.join(unbatched(cfg))})")
    meta = setup.meta
    n_items = int(meta["n_items"])
    shared = dp_rows.without_indicator(shared)
    clients = [_ready(setup, j, n_items, prepared) for j in jobs]
    results: dict[int, tuple] = {}
    mcfg = cfg["model"]
    template = setup.template(1)
    budget = dp_rows.Budget.of(cfg) if dp_rows.enabled(cfg) else None
    where = {id(j): k for k, j in enumerate(jobs)}
    for part in chunks(clients, cfg, budget_mb, int(mcfg["dim"]), int(mcfg["hidden"])):
        chunk = Chunk(setup, part, shared, template, meta)
        stats = _train_chunk(setup, chunk)
        done = _finish(setup, chunk, shared, stats, n_items)
        del chunk
        if budget is not None:  # each client's clipped update at full size and its row indicator (dp_rows.py)
            done = {k: (dp_rows.client_upload(up, shared, budget), m, st) for k, (up, m, st) in done.items()}
        results.update(done)
        if on_chunk is not None:
            on_chunk([where[id(c.job)] for c in part], [done[id(c.job)] for c in part])
    return [results[id(j)] for j in jobs]


def _ready(setup: RunSetup, job: Job, n_items: int, prepared: dict | None) -> Client:
    """The job's Client: the one prepared ahead for it, or `prepare`'s now (`prepare` reads only
    the client, the round and the data, so both are the same client)."""
    c = prepared_for(prepared, job)
    return dataclasses.replace(c, job=job) if c is not None else prepare(setup, job, n_items)


ENCODE_BLOCK = 16  # clients whose float64 updates are encoded at once: small enough to stay in cache (2x faster
                   # than a whole chunk at once), each client's arrays the same bit for bit


def _finish(setup: RunSetup, chunk: Chunk, shared: dict[str, np.ndarray], stats, n_items: int) -> dict:
    """Every client's (upload, metrics, state) of a trained chunk."""
    cfg = setup.cfg
    model, _ = setup.template(1)
    pnames, snames = personal_names(model, cfg["aggregate"]), shared_names(model, cfg["aggregate"])
    P = {n: p.detach().cpu().numpy() for n, p in chunk.P.items()}
    clients = chunk.clients
    sparse = clients[0].send_rows is not None
    if sparse:  # the updates of ENCODE_BLOCK clients at a time (sparse_codec.sparse_payloads: sparse_payload's arrays)
        rows = chunk.rows.cpu().numpy()  # send_rows is the row set the chunk holds (rows == send_rows)
        sent64 = {n: shared[n].astype(np.float64) for n in snames}  # (each float32 value exactly)

        def delta(trained: np.ndarray, sent: np.ndarray) -> np.ndarray:
            """float32 trained - float32 sent in float64: each value cast, then subtracted (the floats
            of np.subtract(..., dtype=float64), whose casting loop is 1.5x slower)."""
            out = trained.astype(np.float64)
            out -= sent
            return out

        def block(a: int) -> list[dict]:
            part, b = clients[a:a + ENCODE_BLOCK], slice(a, a + ENCODE_BLOCK)
            R = max(len(c.send_rows) for c in part)
            rd = {n: delta(P[n][b, :R], sent64[n][rows[b, :R]]) for n in snames if n in ROW_TABLES}
            dd = {n: delta(P[n][b], sent64[n]) for n in snames if n not in ROW_TABLES}
            return sparse_payloads(rd, dd, [c.send_rows for c in part], n_items, cfg["exchange"]["dtype"],
                                   [np.random.default_rng([c.seed, 2]) for c in part], overwrite=True)

        uploads = [u for a in range(0, len(clients), ENCODE_BLOCK) for u in block(a)]
    out = {}
    for k, c in enumerate(clients):
        nu = len(c.job.data.users)
        state = {PERSONAL: {n: np.array(P[n][k, :nu] if n.startswith("personal.user_") else P[n][k]) for n in pnames}}
        sums, wsum, learned = stats[k]
        if learned is not None:  # uncertainty's log-variances, DWA's loss history (client_step.train_client)
            state[WEIGHTING] = learned
        elif WEIGHTING in c.job.state:
            state[WEIGHTING] = c.job.state[WEIGHTING]
        steps = max(len(c.perms) * int(math.ceil(c.n / setup.tcfg.batch_size)), 1)
        metrics = train_metrics(c.n, {t: sums[t] / steps for t in cfg["tasks"]},
                                {t: wsum[t] / steps for t in cfg["tasks"]})
        if sparse:
            upload = uploads[k]
        else:
            upload = {}
            for n in snames:
                if n in ROW_TABLES:
                    full = shared[n].copy()
                    full[c.rows] = P[n][k, :len(c.rows)]
                    upload[n] = full
                else:
                    upload[n] = np.array(P[n][k])
        out[id(c.job)] = (upload, metrics, state)
    return out


def round_flops(setup: RunSetup, jobs: list[Job], budget_mb: float = CHUNK_MB) -> tuple[float, float]:
    """(multiply-add FLOPs of these clients' training round as the batch computes it, padding
    included; as the per-client path computes it: every item through the item tower each step,
    click logits per pair), counting the matmuls only (forward, and the backward's two)."""
    cfg, tcfg = setup.cfg, setup.tcfg
    m = cfg["model"]
    d, h, layers = int(m["dim"]), int(m["hidden"]), int(m["layers"])
    meta = setup.meta
    n_items, feats = int(meta["n_items"]), sum(meta["item_cards"]) + meta["item_multi"].shape[1]
    tower = 2 * (d * h + (layers - 1) * h * h + h * d) * 3  # per row: forward + two backward products
    tasks, bs = cfg["tasks"], tcfg.batch_size

    def step(c, rows, b, u, logits):  # c clients, `rows` items through the tower, `logits` click logits each
        return c * (rows * (tower + 4 * feats * d) + u * tower + bool(ranking_tasks(tasks)) * logits * d * 6
                    + b * d * 12 * len(tasks))

    clients = [prepare(setup, j, n_items) for j in jobs]
    padded = 0.0
    for part in chunks(clients, cfg, budget_mb, d, h):
        ns = np.array([c.n for c in part])
        r, u = max(len(c.rows) for c in part), max(len(c.job.data.users) for c in part)
        for s in range(int(math.ceil(ns.max() / bs))):
            padded += tcfg.epochs * step(len(part), r, int(np.clip(ns - s * bs, 0, bs).max()), u, u * r)
    single = 0.0
    for c in clients:
        for s in range(int(math.ceil(c.n / bs))):
            b = min(bs, c.n - s * bs)
            single += tcfg.epochs * step(1, n_items, b, len(c.job.data.users), b * len(c.rows))
    return padded, single
