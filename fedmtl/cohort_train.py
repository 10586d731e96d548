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

from . import dp_rows
from .client_step import PERSONAL, WEIGHTING, RunSetup, client_seed, init_user_emb, sparse_rows, train_metrics
from .data import ClientData
from .model import personal_names, shared_names
from .sparse_codec import ROW_TABLES, sparse_payloads
from .tasks import choose_rows, dataset_labels, get as task_of, ranking_tasks

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # torch.optim.Adam's defaults, as train._optimizer uses them


def unbatched(cfg: dict) -> list[str]:
    """The knobs of `cfg` the batched step does not implement (empty: it batches every client)."""
    out = []
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
    if ranking_tasks(cfg["tasks"]) and t["click_loss"] == "sampled":
        out.append("train.click_loss=sampled (per-client negative draws)")
    if dataset_labels(cfg["dataset"]) is not None and any(task_of(t).pairwise for t in cfg["tasks"]):
        # the batch carries the rating column only; an every-row event (ranking) reads no label
        out.append(f"dataset={cfg['dataset']['name']} with pair tasks on its label columns")
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
    ranking = bool(ranking_tasks(cfg["tasks"]))
    if send is not None:
        rows = send
    elif ranking and tcfg.click_loss == "sampled_softmax":
        rows = choose_rows(touched, n_items, tcfg.num_negatives, np.random.default_rng([int(seed), 3]))
    elif ranking:  # softmax over every item
        rows, offset = np.arange(n_items), np.zeros(n_items)
    else:
        rows = np.unique(touched)
    if offset is None and ranking:  # tasks.click_candidates: own 0, pads log(others / pads)
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
    click = bool(ranking_tasks(cfg["tasks"]))
    order = sorted(clients, key=lambda c: (c.n, len(c.rows)))
    out, cur, big = [], [], (0, 0, 0)

    def size(b, r, u):  # bytes a client of the chunk holds in a step: rows, pairs, click logits per user
        return 4 * (r * (3 * dim + 2 * hidden) * 6 + b * (6 * dim + 2 * hidden) * 4 + (u * r * 5 if click else 0))

    first = None
    for c in order:
        mine = (min(bs, c.n), len(c.rows), len(c.job.data.users))
        grown = tuple(max(x, y) for x, y in zip(big, mine))
        # a new chunk when this one would outgrow the budget, or pad its first clients' rows by over 15%
        if cur and (size(*grown) * (len(cur) + 1) > budget_mb * 2**20 or grown[1] > 1.15 * first[1] + 8):
            out.append(cur)
            cur, grown = [], mine
        if not cur:
            first = mine
        cur.append(c)
        big = grown
    if cur:
        out.append(cur)
    return out


def _bgather(table: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """table [C, N, ...], idx [C, M] -> [C, M, ...]: each client's rows of its own table
    (torch.gather: its backward is a scatter_add, not an accumulating index_put)."""
    rest = table.shape[2:]
    full = idx.reshape(*idx.shape, *[1] * len(rest)).expand(*idx.shape, *rest)
    return torch.gather(table, 1, full)


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
        for k, c in enumerate(clients):
            rows[k, :len(c.rows)] = c.rows
        self.rows = torch.as_tensor(rows, device=dev)
        if clients[0].offset is not None:
            off = np.full((C, R), -np.inf, np.float32)
            for k, c in enumerate(clients):
                off[k, :len(c.rows)] = c.offset
            self.offset = torch.as_tensor(off, device=dev)
        # an item's side features as one [C, R, F] matrix: one-hot of each field, then its genres;
        # times the matching [C, F, d] stack of field tables and genre weights = their embedding sum
        cat = torch.as_tensor(meta["item_cat"], device=dev)[self.rows]  # [C, R, fields]
        feats = [torch.nn.functional.one_hot(cat[..., f], card).to(torch.float32)
                 for f, card in enumerate(meta["item_cards"])]
        multi = meta["item_multi"]
        if multi.shape[1]:
            feats.append(torch.as_tensor(multi, dtype=torch.float32, device=dev)[self.rows])
        self.item_feats = torch.cat(feats, -1) if feats else None
        self.n_item_fields, self.has_genres = len(meta["item_cards"]), bool(multi.shape[1])
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
        self.layers = int(cfg["model"].get("layers", 1))
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

    def item_reps(self) -> torch.Tensor:
        """[C, R, d]: model.item_reps of every row each client holds."""
        P = self.P
        x = P["encoder.item_emb.weight"]
        if self.item_feats is not None:
            tables = [P[f"encoder.item_fields.{f}.weight"] for f in range(self.n_item_fields)]
            if self.has_genres:
                tables.append(P["encoder.item_genres.weight"].transpose(1, 2))
            x = x + torch.bmm(self.item_feats, torch.cat(tables, 1))
        return _tower(P, "encoder.item_tower", x, self.layers)

    def user_reps(self) -> torch.Tensor:
        """[C, U, d]: model.user_reps of each client's users (once a user, not once a pair)."""
        P = self.P
        feats = 0
        for f in range(self.user_cat.shape[-1]):
            feats = feats + _bgather(P[f"encoder.user_fields.{f}.weight"], self.user_cat[..., f])
        return _tower(P, "encoder.user_tower", P["personal.user_emb.weight"] + feats, self.layers)

    def losses(self, u, il, r, mask, counts) -> tuple[dict, torch.Tensor]:
        """Each task's mean loss per client [C] and the regulariser [C] of one padded step.

        The pairs' scores are tasks.losses's; the click softmax's logits are computed once per
        user (every pair of a user has the same row of logits) and each pair reads its own."""
        P, tasks = self.P, self.setup.cfg["tasks"]
        ir = self.item_reps()  # [C, R, d]
        hu = self.user_reps()  # [C, U, d]
        C, U, R = hu.shape[0], hu.shape[1], ir.shape[1]
        ir_pairs = _bgather(ir, il) if any(task_of(t).pairwise for t in tasks) else None  # [C, B, d]
        denom = counts.clamp(min=1.0)
        out = {}
        for t, task in enumerate(tasks):
            uu = torch.bmm(hu, P[f"personal.heads.{task}.proj"])  # [C, U, d]
            ubias = P["personal.user_bias.weight"][..., t] + P[f"personal.heads.{task}.offset"].unsqueeze(1)  # [C, U]
            ibias = P["encoder.item_bias.weight"][..., t]  # [C, R]
            kind = task_of(task)
            if kind.pairwise:
                s = (_bgather(uu, u) * ir_pairs).sum(-1) + _bgather(ubias, u) + _bgather(ibias, il)
                per = kind.loss_per_pair(s, r)
            else:
                logits = torch.bmm(uu, ir.transpose(1, 2)) + ibias.unsqueeze(1) + self.offset.unsqueeze(1)  # [C, U, R]
                lse = torch.logsumexp(logits, -1)  # [C, U]
                target = torch.gather(logits.reshape(C, U * R), 1, u * R + il)  # [C, B]
                per = _bgather(lse, u) - target
            out[task] = (per * mask).sum(1) / denom
        # the L2 on the rows a batch touches, as each row's squared norm times its count in the batch
        cu = torch.zeros((C, U), device=mask.device).scatter_add_(1, u, mask)
        ci = torch.zeros((C, R), device=mask.device).scatter_add_(1, il, mask)
        reg = self.setup.tcfg.l2 * ((P["personal.user_emb.weight"].pow(2).sum(-1) * cu).sum(1) / denom
                                    + (P["encoder.item_emb.weight"].pow(2).sum(-1) * ci).sum(1) / denom)
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
        self.decay = {n: tcfg.personal_decay for n in self.adam if n not in chunk.shared_names and tcfg.personal_decay}
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
            if n in self.decay:  # train.personal_decay: torch.optim.Adam's weight_decay, g + decay * p
                g = g.add(p, alpha=self.decay[n])
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
    cfg, tcfg = setup.cfg, setup.tcfg
    if tcfg.weight_decay or unbatched(cfg):
        raise ValueError(f"train_cohort: this config is not batched ({'; '.join(unbatched(cfg))})")
    meta = setup.meta
    n_items = int(meta["n_items"])
    shared = dp_rows.without_indicator(shared)
    clients = [_prepare(setup, j, n_items) for j in jobs]
    results: dict[int, tuple] = {}
    mcfg = cfg["model"]
    template = setup.template(1)
    for part in _chunks(clients, cfg, budget_mb, int(mcfg["dim"]), int(mcfg.get("hidden", 64))):
        chunk = _Chunk(setup, part, shared, template, meta)
        stats = _train_chunk(setup, chunk)
        results.update(_finish(setup, chunk, shared, stats, n_items))
        del chunk
    if dp_rows.enabled(cfg):  # each client's clipped update at full size and its row indicator (dp_rows.py)
        budget = dp_rows.Budget.of(cfg)
        results = {k: (dp_rows.client_upload(up, shared, budget), m, st) for k, (up, m, st) in results.items()}
    return [results[id(j)] for j in jobs]


def _finish(setup: RunSetup, chunk: _Chunk, shared: dict[str, np.ndarray], stats, n_items: int) -> dict:
    """Every client's (upload, metrics, state) of a trained chunk."""
    cfg = setup.cfg
    model, _ = setup.template(1)
    pnames, snames = personal_names(model, cfg["aggregate"]), shared_names(model, cfg["aggregate"])
    P = {n: p.detach().cpu().numpy() for n, p in chunk.P.items()}
    clients = chunk.clients
    sparse = clients[0].send_rows is not None
    if sparse:  # the updates of every client at once (sparse_codec.sparse_payloads: sparse_payload's arrays)
        R = max(len(c.send_rows) for c in clients)
        rd = {}
        for n in snames:
            if n in ROW_TABLES:  # send_rows is the row set the chunk holds (rows == send_rows)
                rd[n] = P[n][:, :R].astype(np.float64) - shared[n][chunk.rows.cpu().numpy()[:, :R]].astype(np.float64)
        dd = {n: P[n].astype(np.float64) - shared[n].astype(np.float64) for n in snames if n not in ROW_TABLES}
        uploads = sparse_payloads(rd, dd, [c.send_rows for c in clients], n_items,
                                  (cfg.get("exchange") or {}).get("dtype", "float32"),
                                  [np.random.default_rng([c.seed, 2]) for c in clients])
    out = {}
    for k, c in enumerate(clients):
        nu = len(c.job.data.users)
        state = {PERSONAL: {n: np.array(P[n][k, :nu] if n.startswith("personal.user_") else P[n][k]) for n in pnames}}
        if WEIGHTING in c.job.state:
            state[WEIGHTING] = c.job.state[WEIGHTING]
        sums, wsum = stats[k]
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


class _Scorer:
    """One client's model for `train.evaluate`, from representations computed once for the whole
    cohort: its users' tower outputs, the items' (every client evaluates the same shared model)."""

    def __init__(self, tasks, hu, ubias, heads, ir, item_bias):
        self.tasks, self.hu, self.ubias, self.heads, self.ir, self.item_bias = tasks, hu, ubias, heads, ir, item_bias

    def eval(self):
        return self

    def item_reps(self):
        return self.ir

    def pair_scores(self, users, items):
        """MultiTaskRecommender.pair_scores."""
        out = {}
        for t, task in enumerate(self.tasks):
            proj, offset = self.heads[task]
            out[task] = ((self.hu[t][users] @ proj) * self.ir[t][items]).sum(-1) + offset \
                + self.ubias[users][:, t] + self.item_bias[items][:, t]
        return out

    def all_item_scores(self, users, task, item_reps=None):
        """MultiTaskRecommender.all_item_scores."""
        t = self.tasks.index(task)
        proj, offset = self.heads[task]
        ir = item_reps if item_reps is not None else self.ir
        u = self.hu[t][users] @ proj
        return u @ ir[t].T + self.item_bias[:, t] + self.ubias[users][:, t:t + 1] + offset


@dataclass
class EvalJob:
    """One client's evaluation request: `item_item`, click_mix's rows of B for it (or None)."""

    pid: int
    data: ClientData
    state: dict
    item_item: dict | None = None


@torch.no_grad()
def evaluate_cohort(setup: RunSetup, shared: dict[str, np.ndarray], jobs: list[EvalJob]) -> list[dict]:
    """Every job's metric parts, as client_step.evaluate_client gives them: the shared model's
    item representations once for all, every client's users through the user tower at once,
    then each client's own metrics (train.evaluate) from those."""
    import copy

    from .client_step import item_item_blends
    from .model import set_arrays
    from .train import evaluate

    cfg, dev = setup.cfg, setup.device
    tasks = cfg["tasks"]
    template, init = setup.template(1)
    model = copy.deepcopy(template)
    set_arrays(model, shared)
    model.eval()
    ir = model.item_reps()
    item_bias = model.encoder.item_bias.weight
    personal = []
    for j in jobs:
        saved = j.state.get(PERSONAL)
        n = len(j.data.users)
        dim = init["personal.user_emb.weight"].shape[1]
        p = {k: torch.as_tensor(v, device=dev) for k, v in saved.items()} if saved is not None else {
            "personal.user_emb.weight": init_user_emb(cfg, j.pid, (n, dim)).to(dev),
            "personal.user_bias.weight": torch.zeros((n, len(tasks)), device=dev)}
        personal.append(p)
    emb = torch.cat([p["personal.user_emb.weight"] for p in personal])
    ucat = torch.as_tensor(np.concatenate([j.data.user_cat for j in jobs]), device=dev)
    hu_all = model.encoder.user_tower(emb + model.encoder.user_features(ucat))
    out, start = [], 0
    for j, p in zip(jobs, personal):
        n = len(j.data.users)
        heads = {}
        for task in tasks:
            pk, ok = f"personal.heads.{task}.proj", f"personal.heads.{task}.offset"
            if pk in p:
                heads[task] = (p[pk], p[ok])
            elif j.state.get(PERSONAL) is None and pk in personal_names(model, cfg["aggregate"]):
                heads[task] = (init[pk], init[ok])  # a client's first evaluation: the initial heads
            else:
                heads[task] = (model.personal.heads[task].proj, model.personal.heads[task].offset)
        scorer = _Scorer(tasks, [h[start:start + n] for h in hu_all], p["personal.user_bias.weight"], heads, ir,
                         item_bias)
        start += n
        blend, mixes = (None, None) if j.item_item is None else item_item_blends(cfg, j.item_item, dev)
        part = evaluate(scorer, j.data, tasks, item_item=blend, mixes=mixes)
        part["num-examples"] = int(len(j.data.test_u))
        out.append(part)
    return out


def round_flops(setup: RunSetup, jobs: list[Job]) -> tuple[float, float]:
    """(multiply-add FLOPs of these clients' training round as the batch computes it, padding
    included; as the per-client path computes it: every item through the item tower each step,
    click logits per pair), counting the matmuls only (forward, and the backward's two)."""
    cfg, tcfg = setup.cfg, setup.tcfg
    m = cfg["model"]
    d, h, layers = int(m["dim"]), int(m.get("hidden", 64)), int(m.get("layers", 1))
    meta = setup.meta
    n_items, feats = int(meta["n_items"]), sum(meta["item_cards"]) + meta["item_multi"].shape[1]
    tower = 2 * (d * h + (layers - 1) * h * h + h * d) * 3  # per row: forward + two backward products
    tasks, bs = cfg["tasks"], tcfg.batch_size

    def step(c, rows, b, u, logits):  # c clients, `rows` items through the tower, `logits` click logits each
        return c * (rows * (tower + 4 * feats * d) + u * tower + bool(ranking_tasks(tasks)) * logits * d * 6
                    + b * d * 12 * len(tasks))

    clients = [_prepare(setup, j, n_items) for j in jobs]
    padded = 0.0
    for part in _chunks(clients, cfg, 1024.0, d, h):
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
