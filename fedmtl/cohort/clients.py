"""A cohort's clients before they are stacked: each job's row set, logit offsets, epoch
permutations and training pairs (`prepare`), and the chunks they are trained in (`chunks`:
sorted by size, each chunk's padded step about a memory budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..config_types import RunConfig
from ..client_step import RunSetup, client_seed, sparse_rows
from ..data import ClientData
from ..tasks import choose_rows, ranking_tasks


@dataclass
class Job:
    """One client's training request."""

    pid: int
    data: ClientData
    state: dict
    server_round: int


@dataclass
class Client:
    """A job as the batch holds it: its seed, row sets, training pairs and permutations."""

    job: Job
    seed: int
    send_rows: np.ndarray | None  # exchange=sparse's row set (None: dense upload)
    rows: np.ndarray  # the rows of the item tables it holds, sorted
    offset: np.ndarray | None  # the click loss's logit offsets over `rows` (None: no click task)
    pos: np.ndarray  # each training pair's item as an index into `rows`
    perms: list[np.ndarray]  # each epoch's permutation of its training pairs
    tu: np.ndarray  # its training pairs' local users and ratings
    tr: np.ndarray
    ty: dict[str, np.ndarray] | None = None  # an interaction log's label columns of those pairs (ClientData.train_y)
    head_perms: list[np.ndarray] | None = None  # aggregate=fedrep: the head phase's epochs (`perms`: the encoder phase's)

    @property
    def n(self) -> int:
        return self.job.data.n_train


def prepare(setup: RunSetup, job: Job, n_items: int) -> Client:
    """A job's Client: its row set (exchange=sparse's, the sampled softmax's candidates, every
    item, or its own items), its click logit offsets and each epoch's permutation."""
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
        uniq = np.unique(touched)
        own = np.zeros(len(rows), bool)
        own[np.searchsorted(rows, uniq)] = True  # np.isin(rows, uniq): every row set holds the client's items
        n_pad = int((~own).sum())
        offset = np.where(own, 0.0, math.log((n_items - len(uniq)) / n_pad) if n_pad else 0.0)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    head_perms = None
    if cfg["aggregate"] == "fedrep":  # local_rounds: the head phase's local_train at seed, the encoder's at seed + 1
        head_perms = [torch.randperm(data.n_train, generator=gen).numpy() for _ in range(int(cfg["fedrep"]["head_epochs"]))]
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + 1)
    perms = [torch.randperm(data.n_train, generator=gen).numpy() for _ in range(tcfg.epochs)]
    ty = None if data.train_y is None else {k: v.cpu().numpy() for k, v in data.train_y.items()}
    return Client(job, seed, send, rows, offset, np.searchsorted(rows, touched), perms,
                  data.train_u.cpu().numpy(), data.train_r.cpu().numpy(), ty, head_perms)


def prepare_ahead(setup: RunSetup, jobs: list[Job]) -> dict:
    """{(pid, server round): Client} of jobs, prepared before their round (train_cohort's `prepared`)."""
    n_items = int(setup.meta["n_items"])
    return {(j.pid, j.server_round): prepare(setup, j, n_items) for j in jobs}


def prepared_for(prepared: dict | None, job: Job) -> Client | None:
    """The client prepared ahead (cohort.prepare_ahead) for the job's client, round and data, or None."""
    c = prepared.get((job.pid, job.server_round)) if prepared else None
    return c if c is not None and c.job.data is job.data else None


CHUNK_MB = 128.0  # backend.chunk_mb's default (conf/backend/cohort.yaml): fastest of 16-256 on the ML-100k recipe


def chunks(clients: list[Client], cfg: RunConfig, budget_mb: float, dim: int, hidden: int) -> list[list[Client]]:
    """Clients sorted by size, in chunks whose padded step fits about `budget_mb`."""
    bs = int(cfg["train"]["batch_size"])
    click = bool(ranking_tasks(cfg["tasks"]))
    per_user_row = 5 + 2 * len(cfg["tasks"])  # the click logits' 5, and every task's user x row scores and their gradient
    order = sorted(clients, key=lambda c: (c.n, len(c.rows)))
    out, cur, big = [], [], (0, 0, 0)

    def size(b, r, u):  # bytes a client of the chunk holds in a step: rows, pairs, scores and click logits per user
        return 4 * (r * (3 * dim + 2 * hidden) * 6 + b * (6 * dim + 2 * hidden) * 4 + (u * r * per_user_row if click else 0))

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
