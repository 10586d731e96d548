"""Many clients' rounds as one batched computation (no Flower): backend=cohort's arithmetic.

`train_cohort(setup, shared, jobs)` gives, for every job, what `client_step.train_client`
gives for it alone (upload, metrics, new state), to float tolerance: the same seeds, the
same permutations and mini-batches, the same row sets, the same optimiser steps, the same
upload encoding. Instead of one model per client it holds every client's parameters stacked
along a leading client axis:

- row tables (item embeddings, item biases): only the rows a client can touch this round
  (its row set: exchange=sparse's rows, the click loss's candidates, else its own items),
  gathered to [C, R, ...] and padded to the longest; a padded row is never a target and its
  click logit is -inf;
- every other parameter (towers, field tables, heads, user embeddings and biases): [C, ...];
- each step's mini-batch: [C, B] pairs, padded to the longest and masked, the losses means
  over each client's own pairs. A client whose epoch has fewer batches is inactive in the
  steps beyond them (its parameters and Adam moments are left as they are).

The clients are independent, so one backward pass of the sum of their losses gives each
its own gradients. SGD and Adam steps are written out as torch's (foreach) optimisers take
them, with each client's own Adam step count. Clients are sorted by size and split in
chunks that fit `budget_mb`, each chunk padded to its own longest.

What it does not batch (`unbatched`: the knobs that need per-client randomness, gradient
surgery or modules written out here only for shared_bottom) goes through the per-client path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .client_step import (PERSONAL, WEIGHTING, RunSetup, client_seed, init_user_emb, sparse_rows, train_metrics,
                          upload_arrays)
from .data import ClientData
from .model import personal_names, shared_names
from .sparse_codec import ROW_TABLES
from .tasks import LIKE_THRESHOLD, choose_rows

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as train._optimizer uses them


def unbatched(cfg: dict) -> list[str]:
    """The knobs of `cfg` the batched step does not implement (empty: it batches every client)."""
    out = []
    if cfg["privacy"]["name"] != "none":
        out.append(f"privacy={cfg['privacy']['name']} (per-client clipping, noise or SecAgg+)")
    faults = cfg.get("faults") or {}
    if faults.get("drop_rate") or faults.get("straggler_rate"):
        out.append("faults.* (injected per-client failures)")
    if cfg["weighting"]["name"] != "fixed":
        out.append(f"weighting={cfg['weighting']['name']} (per-client gradient weighting)")
    m = cfg["model"]
    if m["name"] != "shared_bottom":
        out.append(f"model={m['name']}")
    if m.get("dropout", 0.0):
        out.append("model.dropout > 0 (per-client dropout masks)")
    if m.get("history"):
        out.append("model.history=true")
    if cfg["aggregate"] == "fedrep":
        out.append("aggregate=fedrep")
    if (cfg.get("init") or {}).get("freeze_encoder"):
        out.append("init.freeze_encoder=true")
    t = cfg["train"]
    if t.get("weight_decay"):
        out.append("train.weight_decay > 0 (decays rows outside a client's row set)")
    if "click" in cfg["tasks"] and t["click_loss"] == "sampled":
        out.append("train.click_loss=sampled (per-client negative draws)")
    if (cfg.get("transfer") or {}).get("new_items"):
        out.append("transfer.new_items > 0 (hidden items)")
    return out


@dataclass
class Job:
    """One client's training request."""

    pid: int
    data: ClientData
    state: dict
    server_round: int


@dataclass
class _Client:
    job: Job
    seed: int
    send_rows: np.ndarray | None  # exchange=sparse's row set (None: dense upload)
    rows: np.ndarray  # the rows of the item tables it holds, sorted
    offset: np.ndarray | None  # the click loss's logit offsets over `rows` (None: no click task)
    pos: np.ndarray  # each training pair's item as an index into `rows`
    perms: list[np.ndarray]  # each epoch's permutation of its training pairs
    tu: np.ndarray  # its training pairs' local users and ratings
    tr: np.ndarray

    @property
    def n(self) -> int:
        return self.job.data.n_train


def _prepare(setup: RunSetup, job: Job, n_items: int) -> _Client:
    cfg, tcfg = setup.cfg, setup.tcfg
    seed = client_seed(cfg, job.server_round, job.pid)
    data = job.data
    touched = data.train_i.cpu().numpy()
    send = sparse_rows(cfg, data, n_items, seed)
    offset = None
    if send is not None:
        rows = send
    elif "click" in cfg["tasks"] and tcfg.click_loss == "sampled_softmax":
        rows = choose_rows(touched, n_items, tcfg.num_negatives, np.random.default_rng([int(seed), 3]))
    elif "click" in cfg["tasks"]:  # softmax over every item
        rows, offset = np.arange(n_items), np.zeros(n_items)
    else:
        rows = np.unique(touched)
    if offset is None and "click" in cfg["tasks"]:  # tasks.click_candidates: own 0, pads log(others / pads)
        own = np.isin(rows, np.unique(touched))
        n_pad = int((~own).sum())
        offset = np.where(own, 0.0, math.log((n_items - len(np.unique(touched))) / n_pad) if n_pad else 0.0)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    perms = [torch.randperm(data.n_train, generator=gen).numpy() for _ in range(tcfg.epochs)]
    return _Client(job, seed, send, rows, offset, np.searchsorted(rows, touched), perms,
                   data.train_u.cpu().numpy(), data.train_r.cpu().numpy())


def _chunks(clients: list[_Client], cfg: dict, budget_mb: float, dim: int, hidden: int) -> list[list[_Client]]:
    """Clients sorted by size, in chunks whose padded step fits about `budget_mb`."""
    bs = int(cfg["train"]["batch_size"])
    click = "click" in cfg["tasks"]
    order = sorted(clients, key=lambda c: (c.n, len(c.rows)))
    out, cur, big_b, big_r = [], [], 0, 0
    for c in order:
        b, r = max(big_b, min(bs, c.n)), max(big_r, len(c.rows))
        per = 4 * (r * (3 * dim + 2 * hidden) * 6 + b * (6 * dim + 2 * hidden) * 4 + (b * r * 5 if click else 0))
        if cur and per * (len(cur) + 1) > budget_mb * 2**20:
            out.append(cur)
            cur, b, r = [], min(bs, c.n), len(c.rows)
        cur.append(c)
        big_b, big_r = b, r
    if cur:
        out.append(cur)
    return out


def _bgather(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table [C, N, ...], idx [C, M] -> [C, M, ...]: each client's rows of its own table."""
    ar = torch.arange(table.shape[0], device=table.device).unsqueeze(1)
    return table[ar, idx]


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """nn.Linear per client: x [C, N, in], w [C, out, in], b [C, out]."""
    if b is None:
        return torch.bmm(x, w.transpose(1, 2))
    return torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2))


def _tower(P: dict, prefix: str, x: torch.Tensor, layers: int) -> torch.Tensor:
    """SharedBottom per client: x + mlp(x) (towers.mlp: Linear, ReLU, Dropout per layer, then Linear)."""
    h = x
    for k in range(layers):
        h = torch.relu(_linear(h, P[f"{prefix}.net.{3 * k}.weight"], P[f"{prefix}.net.{3 * k}.bias"]))
    return x + _linear(h, P[f"{prefix}.net.{3 * layers}.weight"], P[f"{prefix}.net.{3 * layers}.bias"])


class _Chunk:
    """The stacked tensors of a chunk of clients."""

    def __init__(self, setup: RunSetup, clients: list[_Client], shared: dict[str, np.ndarray], template, meta):
        self.setup, self.clients = setup, clients
        cfg, dev = setup.cfg, setup.device
        model, init = template
        self.names = [n for n, _ in model.named_parameters()]
        self.shared_names = set(shared_names(model, cfg["aggregate"]))
        C = len(clients)
        R = max(len(c.rows) for c in clients)
        U = max(len(c.job.data.users) for c in clients)
        rows = np.zeros((C, R), np.int64)
        valid_rows = np.zeros((C, R), bool)
        for k, c in enumerate(clients):
            rows[k, :len(c.rows)] = c.rows
            valid_rows[k, :len(c.rows)] = True
        self.rows = torch.as_tensor(rows, device=dev)
        if clients[0].offset is not None:
            off = np.full((C, R), -np.inf, np.float32)
            for k, c in enumerate(clients):
                off[k, :len(c.rows)] = c.offset
            self.offset = torch.as_tensor(off, device=dev)
        self.item_cat = torch.as_tensor(meta["item_cat"], device=dev)[self.rows]  # [C, R, F]
        multi = meta["item_multi"]
        self.item_multi = torch.as_tensor(multi, dtype=torch.float32, device=dev)[self.rows] if multi.shape[1] else None
        ucat = np.zeros((C, U, max(len(meta["user_cards"]), 0)), np.int64)
        for k, c in enumerate(clients):
            ucat[k, :len(c.job.data.users)] = c.job.data.user_cat
        self.user_cat = torch.as_tensor(ucat, device=dev)
        P = {}
        for n in self.names:
            if n in self.shared_names:
                a = torch.as_tensor(shared[n], device=dev)
                P[n] = a[self.rows] if n in ROW_TABLES else a.unsqueeze(0).expand(C, *a.shape)
            else:
                P[n] = self._personal(n, init[n], U)
            P[n] = P[n].detach().clone().contiguous().requires_grad_(True)
        self.P = P
        self.anchor = ({n: P[n].detach().clone() for n in self.shared_names}
                       if setup.tcfg.prox_mu > 0 else None)

    def _personal(self, name: str, init: torch.Tensor, U: int) -> torch.Tensor:
        """A personal parameter of every client [C, ...] (users padded to U)."""
        cfg, dev = self.setup.cfg, self.setup.device
        vals = []
        for c in self.clients:
            saved = c.job.state.get(PERSONAL)
            if saved is not None:
                v = torch.as_tensor(saved[name])
            elif name == "personal.user_emb.weight":
                v = init_user_emb(cfg, c.job.pid, (len(c.job.data.users), init.shape[1]))
            elif name.startswith("personal.user_"):  # user biases: zeros (Personal's init)
                v = torch.zeros((len(c.job.data.users), *init.shape[1:]))
            else:
                v = init.cpu()
            if name.startswith("personal.user_") and v.shape[0] < U:
                v = torch.cat([v, torch.zeros((U - v.shape[0], *v.shape[1:]), dtype=v.dtype)])
            vals.append(v.to(torch.float32))
        return torch.stack(vals).to(dev)

    def losses(self, u, il, r, mask, counts) -> tuple[dict, torch.Tensor]:
        """Each task's mean loss per client [C] and the regulariser [C] of one padded step."""
        cfg, P, tasks = self.setup.cfg, self.P, self.setup.cfg["tasks"]
        layers = int(cfg["model"].get("layers", 1))
        # items: every row a client holds (model.item_reps restricted to its rows)
        x = P["encoder.item_emb.weight"]
        for f in range(self.item_cat.shape[-1]):
            x = x + _bgather(P[f"encoder.item_fields.{f}.weight"], self.item_cat[..., f])
        if self.item_multi is not None:
            x = x + _linear(self.item_multi, P["encoder.item_genres.weight"], None)
        ir = _tower(P, "encoder.item_tower", x, layers)  # [C, R, d]
        # users of the batch's pairs (model.user_reps)
        feats = 0
        for f in range(self.user_cat.shape[-1]):
            feats = feats + _bgather(P[f"encoder.user_fields.{f}.weight"], _bgather(self.user_cat[..., f], u))
        xu = _bgather(P["personal.user_emb.weight"], u) + feats
        ur = _tower(P, "encoder.user_tower", xu, layers)  # [C, B, d]
        ubias_all = _bgather(P["personal.user_bias.weight"], u)  # [C, B, T]
        ibias_all = P["encoder.item_bias.weight"]  # [C, R, T]
        denom = counts.clamp(min=1.0)
        out = {}
        for t, task in enumerate(tasks):
            uu = torch.bmm(ur, P[f"personal.heads.{task}.proj"])
            ubias = ubias_all[..., t] + P[f"personal.heads.{task}.offset"].unsqueeze(1)
            ibias = ibias_all[..., t]
            if task in ("rating", "like"):
                s = (uu * _bgather(ir, il)).sum(-1) + ubias + _bgather(ibias, il)
                if task == "rating":
                    per = (s - r) ** 2
                else:
                    per = torch.nn.functional.binary_cross_entropy_with_logits(
                        s, (r >= LIKE_THRESHOLD).float(), reduction="none")
            else:
                logits = torch.bmm(uu, ir.transpose(1, 2)) + ibias.unsqueeze(1) + self.offset.unsqueeze(1)
                per = -torch.log_softmax(logits, -1).gather(-1, il.unsqueeze(-1)).squeeze(-1)
            out[task] = (per * mask).sum(1) / denom
        l2 = self.setup.tcfg.l2
        reg = l2 * (((_bgather(P["personal.user_emb.weight"], u).pow(2).sum(-1) * mask).sum(1) / denom)
                    + ((_bgather(P["encoder.item_emb.weight"], il).pow(2).sum(-1) * mask).sum(1) / denom))
        if self.anchor is not None:
            mu = self.setup.tcfg.prox_mu
            reg = reg + 0.5 * mu * sum((P[k] - a).pow(2).flatten(1).sum(1) for k, a in self.anchor.items())
        return out, reg


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *[1] * (like.dim() - 1))


class _Optim:
    """train._optimizer's steps on stacked parameters: SGD or Adam on the shared ones, Adam
    on the personal ones, each client with its own step count."""

    def __init__(self, chunk: _Chunk, tcfg):
        self.chunk, self.tcfg = chunk, tcfg
        self.lr = tcfg.lr
        self.lr_shared = tcfg.shared_lr if tcfg.shared_lr is not None else tcfg.lr
        C = len(chunk.clients)
        self.steps = torch.zeros(C, dtype=torch.float64)
        self.adam = {n for n in chunk.names if not (n in chunk.shared_names and tcfg.optimizer == "sgd")}
        self.m = {n: torch.zeros_like(chunk.P[n]) for n in self.adam}
        self.v = {n: torch.zeros_like(chunk.P[n]) for n in self.adam}

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        """One step of the clients where `active` (bool [C], on the chunk's device)."""
        P = self.chunk.P
        act_cpu = active.cpu()
        self.steps += act_cpu.double()
        b1, b2 = ADAM_BETAS
        st = self.steps.clamp(min=1.0)
        bc1 = 1 - b1 ** st
        bc2_sqrt = (1 - b2 ** st).sqrt()
        dev = active.device
        lr_of = {n: (self.lr_shared if n in self.chunk.shared_names else self.lr) for n in self.adam}
        for n, p in P.items():
            g = p.grad
            if g is None:
                continue
            if n not in self.adam:  # torch.optim.SGD: p - lr * g (g is 0 where inactive)
                p.add_(g, alpha=-self.lr_shared)
                continue
            m, v = self.m[n], self.v[n]
            a = _bcast(active, p)
            m_new = m.lerp(g, 1 - b1)
            v_new = v * b2
            v_new.addcmul_(g, g, value=1 - b2)
            step_size = _bcast((-(lr_of[n] / bc1)).to(torch.float32).to(dev), p)
            denom = v_new.sqrt() / _bcast(bc2_sqrt.to(torch.float32).to(dev), p) + ADAM_EPS
            p.copy_(torch.where(a, p + step_size * m_new / denom, p))
            m.copy_(torch.where(a, m_new, m))
            v.copy_(torch.where(a, v_new, v))

    def zero_grad(self) -> None:
        for p in self.chunk.P.values():
            p.grad = None


def _train_chunk(setup: RunSetup, chunk: _Chunk) -> list[tuple[dict, dict]]:
    """Train a chunk; per client (its losses summed over steps, its weights summed), both dicts by task."""
    cfg, tcfg, dev = setup.cfg, setup.tcfg, setup.device
    tasks = cfg["tasks"]
    w = {t: float((cfg["weighting"].get("weights") or {}).get(t, 1.0)) for t in tasks}
    bs = tcfg.batch_size
    clients = chunk.clients
    C = len(clients)
    ns = np.array([c.n for c in clients])
    opt = _Optim(chunk, tcfg)
    sums = [{t: 0.0 for t in tasks} for _ in clients]
    wsum = [{t: 0.0 for t in tasks} for _ in clients]
    steps_max = int(math.ceil(ns.max() / bs))
    for e in range(tcfg.epochs):
        epoch_sums = [{t: 0.0 for t in tasks} for _ in clients]
        for s in range(steps_max):
            lens = np.clip(ns - s * bs, 0, bs)
            B = int(lens.max())
            if B == 0:
                break
            u = np.zeros((C, B), np.int64)
            il = np.zeros((C, B), np.int64)
            r = np.zeros((C, B), np.float32)
            for k, c in enumerate(clients):
                if lens[k]:
                    b = c.perms[e][s * bs:s * bs + lens[k]]
                    u[k, :lens[k]] = c.tu[b]
                    il[k, :lens[k]] = c.pos[b]
                    r[k, :lens[k]] = c.tr[b]
            mask_np = np.arange(B)[None, :] < lens[:, None]
            mask = torch.as_tensor(mask_np, dtype=torch.float32, device=dev)
            counts = torch.as_tensor(lens, dtype=torch.float32, device=dev)
            ls, reg = chunk.losses(torch.as_tensor(u, device=dev), torch.as_tensor(il, device=dev),
                                   torch.as_tensor(r, device=dev), mask, counts)
            total = sum(w[t] * ls[t] for t in tasks) + reg
            opt.zero_grad()
            total.sum().backward()
            opt.step(torch.as_tensor(lens > 0, device=dev))
            vals = torch.stack([ls[t].detach() for t in tasks], 1).cpu().numpy()
            for k in np.nonzero(lens)[0]:
                for j, t in enumerate(tasks):
                    epoch_sums[k][t] += float(vals[k, j])
                    wsum[k][t] += w[t]
        for k in range(C):
            for t in tasks:
                sums[k][t] += epoch_sums[k][t]
    return list(zip(sums, wsum))


def train_cohort(setup: RunSetup, shared: dict[str, np.ndarray], jobs: list[Job], budget_mb: float = 1024.0
                 ) -> list[tuple[dict, dict, dict]]:
    """Every job's (upload, metrics, new state), as client_step.train_client gives them."""
    from .data import federation_for

    cfg, tcfg = setup.cfg, setup.tcfg
    if tcfg.weight_decay or unbatched(cfg):
        raise ValueError(f"train_cohort: this config is not batched ({'; '.join(unbatched(cfg))})")
    meta = federation_for(cfg).meta
    n_items = int(meta["n_items"])
    clients = [_prepare(setup, j, n_items) for j in jobs]
    results: dict[int, tuple] = {}
    mcfg = cfg["model"]
    template = setup.template(1)
    for part in _chunks(clients, cfg, budget_mb, int(mcfg["dim"]), int(mcfg.get("hidden", 64))):
        chunk = _Chunk(setup, part, shared, template, meta)
        stats = _train_chunk(setup, chunk)
        results.update(_finish(setup, chunk, shared, stats, n_items))
        del chunk
    return [results[id(j)] for j in jobs]


def _finish(setup: RunSetup, chunk: _Chunk, shared: dict[str, np.ndarray], stats, n_items: int) -> dict:
    cfg = setup.cfg
    model, _ = setup.template(1)
    pnames, snames = personal_names(model, cfg["aggregate"]), shared_names(model, cfg["aggregate"])
    P = {n: p.detach().cpu().numpy() for n, p in chunk.P.items()}
    out = {}
    for k, c in enumerate(chunk.clients):
        nu = len(c.job.data.users)
        personal = {n: np.array(P[n][k, :nu] if n.startswith("personal.user_") else P[n][k]) for n in pnames}
        arrays = {}
        for n in snames:
            if n in ROW_TABLES:
                full = shared[n].copy()
                full[c.rows] = P[n][k, :len(c.rows)]
                arrays[n] = full
            else:
                arrays[n] = np.array(P[n][k])
        state = {PERSONAL: personal}
        if WEIGHTING in c.job.state:
            state[WEIGHTING] = c.job.state[WEIGHTING]
        sums, wsum = stats[k]
        steps = max(len(c.perms) * int(math.ceil(c.n / setup.tcfg.batch_size)), 1)
        metrics = train_metrics(c.n, {t: sums[t] / steps for t in cfg["tasks"]},
                                {t: wsum[t] / steps for t in cfg["tasks"]})
        upload = upload_arrays(arrays, cfg, shared, c.send_rows, n_items, c.seed)
        out[id(c.job)] = (upload, metrics, state)
    return out
