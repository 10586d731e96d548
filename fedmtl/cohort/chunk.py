"""A chunk of clients stacked along a leading client axis (`Chunk`): their parameters (row
tables gathered to each client's row set and padded), side features and users as [C, ...]
tensors, and the batched forward pass that gives each client's task losses and regulariser.
"""

from __future__ import annotations

import numpy as np
import torch

from ..client_step import PERSONAL, RunSetup, first_personal, init_user_emb
from ..model import shared_names
from ..sparse_codec import ROW_TABLES
from ..tasks import get as task_of
from .clients import Client


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


_FEATURES: dict = {}  # (id of the item feature arrays, device) -> (those arrays, their [n_items, F] matrix)


def _item_features(meta: dict, dev) -> torch.Tensor | None:
    """Every item's side features as one [n_items, F] float32 matrix (one-hot of each field, then
    its genres), built once per run and device: each chunk gathers its rows of it."""
    cat, multi = meta["item_cat"], meta["item_multi"]
    key = (id(cat), id(multi), str(dev))
    hit = _FEATURES.get(key)
    if hit is not None and hit[0] is cat and hit[1] is multi:
        return hit[2]
    cat_t = torch.as_tensor(cat, device=dev)
    feats = [torch.nn.functional.one_hot(cat_t[:, f], card).to(torch.float32)
             for f, card in enumerate(meta["item_cards"])]
    if multi.shape[1]:
        feats.append(torch.as_tensor(multi, dtype=torch.float32, device=dev))
    table = torch.cat(feats, -1) if feats else None
    _FEATURES.clear()  # one run's at a time
    _FEATURES[key] = (cat, multi, table)
    return table


class Chunk:
    """The stacked tensors of a chunk of clients."""

    def __init__(self, setup: RunSetup, clients: list[Client], shared: dict[str, np.ndarray], template, meta):
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
        table = _item_features(meta, dev)
        self.item_feats = table[self.rows] if table is not None else None
        self.n_item_fields, self.has_genres = len(meta["item_cards"]), bool(meta["item_multi"].shape[1])
        ucat = np.zeros((C, U, max(len(meta["user_cards"]), 0)), np.int64)
        for k, c in enumerate(clients):
            ucat[k, :len(c.job.data.users)] = c.job.data.user_cat
        self.user_cat = torch.as_tensor(ucat, device=dev)
        P = {}
        for n in self.names:
            if n in self.shared_names:
                a = torch.as_tensor(shared[n], device=dev)
                if n in ROW_TABLES:  # a gather: a new tensor, each client's own rows
                    P[n] = a[self.rows].requires_grad_(True)
                    continue
                P[n] = a.unsqueeze(0).expand(C, *a.shape)
            else:
                P[n] = self._personal(n, init[n], U)  # (stacked: a new tensor, copied once more below)
            P[n] = P[n].detach().clone().contiguous().requires_grad_(True)
        self.P = P
        self.layers = int(cfg["model"]["layers"])
        self.model, self.arch, self.n_tasks = model, cfg["model"]["name"], len(cfg["tasks"])
        self.anchor = ({n: P[n].detach().clone() for n in self.shared_names}
                       if setup.tcfg.prox_mu > 0 else None)

    def _personal(self, name: str, init: torch.Tensor, U: int) -> torch.Tensor:
        """A personal parameter of every client [C, ...] (users padded to U)."""
        cfg, dev = self.setup.cfg, self.setup.device
        tasks = cfg["tasks"]
        offsets = {f"personal.heads.{t}.offset": k for k, t in enumerate(tasks)}
        vals = []
        for c in self.clients:
            saved = c.job.state.get(PERSONAL)
            if saved is not None:
                v = torch.as_tensor(saved[name])
            elif name == "personal.user_emb.weight":
                v = init_user_emb(cfg, c.job.pid, (len(c.job.data.users), init.shape[1]))
            elif name.startswith("personal.user_"):  # user biases: zeros (Personal's init)
                v = torch.zeros((len(c.job.data.users), *init.shape[1:]))
                if name == "personal.user_bias.weight":  # a log's numeric label under shared heads: its own mean
                    for k, m in first_personal(tasks, c.job.data, self.shared_names)[1].items():
                        v[:, k] = m
            elif name in offsets:  # a head's offset: a log's numeric label starts at the client's own mean
                k = offsets[name]
                v = torch.tensor(first_personal(tasks, c.job.data)[0].get(k, float(init)), dtype=init.dtype)
            else:
                v = init.cpu()
            if name.startswith("personal.user_") and v.shape[0] < U:
                v = torch.cat([v, torch.zeros((U - v.shape[0], *v.shape[1:]), dtype=v.dtype)])
            vals.append(v.to(torch.float32))
        return torch.stack(vals).to(dev)

    def item_reps(self) -> list[torch.Tensor]:
        """model.item_reps of every row each client holds: each task's [C, R, d]."""
        P = self.P
        x = P["encoder.item_emb.weight"]
        if self.item_feats is not None:
            tables = [P[f"encoder.item_fields.{f}.weight"] for f in range(self.n_item_fields)]
            if self.has_genres:
                tables.append(P["encoder.item_genres.weight"].transpose(1, 2))
            x = x + torch.bmm(self.item_feats, torch.cat(tables, 1))
        return self._tower("item_tower", x)

    def user_reps(self) -> list[torch.Tensor]:
        """model.user_reps of each client's users (once a user, not once a pair): each task's [C, U, d]."""
        P = self.P
        feats = 0
        for f in range(self.user_cat.shape[-1]):
            feats = feats + _bgather(P[f"encoder.user_fields.{f}.weight"], self.user_cat[..., f])
        return self._tower("user_tower", P["personal.user_emb.weight"] + feats)

    def _tower(self, name: str, x: torch.Tensor) -> list[torch.Tensor]:
        """Each task's representation [C, N, d] of inputs x [C, N, d] through every client's own
        tower: shared-bottom written out (one representation for all tasks), any other
        architecture (MMoE, PLE) as the model's own module over the client axis (torch.func)."""
        prefix = f"encoder.{name}."
        if self.arch == "shared_bottom":
            return [_tower(self.P, prefix[:-1], x, self.layers)] * self.n_tasks
        module = getattr(self.model.encoder, name)
        params = {n[len(prefix):]: p for n, p in self.P.items() if n.startswith(prefix)}
        return list(torch.func.vmap(lambda p, h: torch.func.functional_call(module, p, (h,)))(params, x))

    def losses(self, u, il, r, mask, counts) -> tuple[dict, torch.Tensor]:
        """Each task's mean loss per client [C] and the regulariser [C] of one padded step.

        The pairs' scores are tasks.losses's. Where a ranking task (click) needs every user's
        scores of every row anyway, every task's user-by-row score matrix comes from one batched
        matmul [C, tasks x U, R] and each pair reads its own score from it (a scalar gather, not
        a gathered [C, B, d] of item representations and its scatter-add backward); otherwise
        each pair's score is the dot product of its gathered representations. The click
        softmax's logits are computed once per user (every pair of a user has the same row of
        logits) and each pair reads its own."""
        P, tasks = self.P, self.setup.cfg["tasks"]
        irs = self.item_reps()  # each task's [C, R, d] (shared-bottom: one tensor for all)
        hus = self.user_reps()  # each task's [C, U, d]
        one = all(x is irs[0] for x in irs)
        C, U, R = hus[0].shape[0], hus[0].shape[1], irs[0].shape[1]
        kinds = [task_of(t) for t in tasks]
        uu = [torch.bmm(hu, P[f"personal.heads.{task}.proj"]) for hu, task in zip(hus, tasks)]  # each [C, U, d]
        scores = None  # [C, T * U, R]: task t's user x row scores in rows t * U .. (t + 1) * U
        if not all(k.pairwise for k in kinds):
            scores = (torch.bmm(torch.cat(uu, 1) if len(uu) > 1 else uu[0], irs[0].transpose(1, 2)) if one else
                      torch.cat([torch.bmm(v, ir.transpose(1, 2)) for v, ir in zip(uu, irs)], 1))
        pairs = scores is None and any(k.pairwise for k in kinds)
        ir_pairs = ([_bgather(irs[0], il)] * len(tasks) if one else [_bgather(ir, il) for ir in irs]) if pairs else None
        denom = counts.clamp(min=1.0)
        out = {}
        for t, (task, kind) in enumerate(zip(tasks, kinds)):
            ubias = P["personal.user_bias.weight"][..., t] + P[f"personal.heads.{task}.offset"].unsqueeze(1)  # [C, U]
            ibias = P["encoder.item_bias.weight"][..., t]  # [C, R]
            if kind.pairwise:
                if scores is not None:
                    dot = torch.gather(scores.reshape(C, -1), 1, (t * U + u) * R + il)
                else:
                    dot = (_bgather(uu[t], u) * ir_pairs[t]).sum(-1)
                s = dot + _bgather(ubias, u) + _bgather(ibias, il)
                per = kind.loss_per_pair(s, r)
            else:
                logits = scores[:, t * U:(t + 1) * U] + ibias.unsqueeze(1) + self.offset.unsqueeze(1)  # [C, U, R]
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
