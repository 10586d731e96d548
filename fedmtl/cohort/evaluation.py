"""A cohort's evaluation (`evaluate_cohort`): the shared model's item representations once for
all, every client's users through the user tower at once, then each client's own metrics
(train.evaluate) from those, as client_step.evaluate_client gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..client_step import PERSONAL, RunSetup, first_personal, init_user_emb
from ..data import ClientData
from ..itemitem import Rows, RowsOf
from ..model import personal_names


class _Scorer:
    """The model `train.evaluate` scores with, from representations computed once for the whole
    cohort (every client evaluates the same shared model): each user's tower output through its
    own client's head (uvec), its head's offset and user bias, the items' representations."""

    def __init__(self, tasks, uvec, uoff, ubias, ir, item_bias):
        self.tasks, self.uvec, self.uoff, self.ubias, self.ir, self.item_bias = tasks, uvec, uoff, ubias, ir, item_bias

    def eval(self):
        return self

    def users(self, a: int, b: int) -> "_Scorer":
        """The scorer of users a..b-1 (one client's, numbered from 0)."""
        return _Scorer(self.tasks, [v[a:b] for v in self.uvec], [o[a:b] for o in self.uoff], self.ubias[a:b],
                       self.ir, self.item_bias)

    def item_reps(self):
        return self.ir

    def pair_scores(self, users, items):
        """MultiTaskRecommender.pair_scores."""
        return {task: (self.uvec[t][users] * self.ir[t][items]).sum(-1) + self.uoff[t][users]
                + self.ubias[users][:, t] + self.item_bias[items][:, t] for t, task in enumerate(self.tasks)}

    def all_item_scores(self, users, task, item_reps=None):
        """MultiTaskRecommender.all_item_scores."""
        t = self.tasks.index(task)
        ir = item_reps if item_reps is not None else self.ir
        return (self.uvec[t][users] @ ir[t].T + self.item_bias[:, t] + self.ubias[users][:, t:t + 1]
                + self.uoff[t][users].unsqueeze(1))


@dataclass
class EvalJob:
    """One client's evaluation request: `item_item`, click_mix's rows of B for it (or None): arrays,
    or `itemitem.RowsOf` (rows of the server's matrices, not taken)."""

    pid: int
    data: ClientData
    state: dict
    item_item: dict | None = None


def _stacked(jobs: list[EvalJob]) -> tuple[ClientData, np.ndarray, np.ndarray]:
    """Every job's data as one ClientData (its users one after another), with the bounds of each
    job's users and test pairs in it."""
    ds = [j.data for j in jobs]
    nu = np.array([len(d.users) for d in ds])
    ub = np.concatenate([[0], np.cumsum(nu)])
    pb = np.concatenate([[0], np.cumsum([len(d.test_u) for d in ds])])
    off = lambda f: torch.cat([getattr(d, f) + int(o) for d, o in zip(ds, ub)])  # noqa: E731
    cat = lambda f: torch.cat([getattr(d, f) for d in ds])  # noqa: E731
    keys = lambda f: None if getattr(ds[0], f) is None else {  # noqa: E731
        k: torch.cat([getattr(d, f)[k] for d in ds]) for k in getattr(ds[0], f)}
    merged = ClientData(np.concatenate([d.users for d in ds]), np.concatenate([d.user_cat for d in ds]),
                        ds[0].n_items, off("train_u"), cat("train_i"), cat("train_r"), off("test_u"), cat("test_i"),
                        cat("test_r"), cand=keys("cand"), train_y=keys("train_y"), test_y=keys("test_y"),
                        train_age=None if ds[0].train_age is None else cat("train_age"))
    return merged, ub, pb


def _shared_rows(jobs: list[EvalJob]) -> dict[str, np.ndarray] | None:
    """{key: matrix} when every job's rows of B (and of the grid's, S's) are rows of one matrix per
    key (the cohort can then score every user against that matrix at once), else None."""
    first = jobs[0].item_item
    if first is None or any(j.item_item is None for j in jobs):
        return None
    out = {k: v.matrix for k, v in first.items() if isinstance(v, RowsOf)}
    if len(out) != len(first) - 1:
        return None
    for j in jobs:
        ii = j.item_item
        if ii.keys() != first.keys() or any(not isinstance(ii[k], RowsOf) or ii[k].matrix is not m
                                            for k, m in out.items()):
            return None
    return out


@torch.no_grad()
def evaluate_cohort(setup: RunSetup, shared: dict[str, np.ndarray], jobs: list[EvalJob]) -> list[dict]:
    """Every job's metric parts, as client_step.evaluate_client gives them: the shared model's
    item representations once for all, every client's users through the user tower and their
    client's heads at once, then every client's metrics from one `train.evaluate` over the
    stacked data (click_mix: every user against the whole of B when each client's rows are rows
    of it; else one client at a time)."""
    import copy

    from ..client_step import blends_of, item_item_blends
    from ..model import set_arrays
    from ..train import evaluate

    if not jobs:
        return []
    cfg, dev = setup.cfg, setup.device
    tasks = cfg["tasks"]
    template, init = setup.template(1)
    model = copy.deepcopy(template)
    set_arrays(model, shared)
    model.eval()
    ir = model.item_reps()
    item_bias = model.encoder.item_bias.weight
    dim = init["personal.user_emb.weight"].shape[1]
    pnames = personal_names(model, cfg["aggregate"])
    server_names = {n for n, _ in model.named_parameters()} - set(pnames)
    personal = []
    for j in jobs:
        saved = j.state.get(PERSONAL)
        n = len(j.data.users)
        p = {k: torch.as_tensor(v, device=dev) for k, v in saved.items()} if saved is not None else {
            "personal.user_emb.weight": init_user_emb(cfg, j.pid, (n, dim)).to(dev),
            "personal.user_bias.weight": torch.zeros((n, len(tasks)), device=dev)}
        if saved is None:  # a log's numeric label under shared heads: the user biases start at the client's mean
            for k, m in first_personal(tasks, j.data, server_names)[1].items():
                p["personal.user_bias.weight"][:, k] = m
        personal.append(p)
    emb = torch.cat([p["personal.user_emb.weight"] for p in personal])
    ucat = torch.as_tensor(np.concatenate([j.data.user_cat for j in jobs]), device=dev)
    hu_all = model.encoder.user_tower(emb + model.encoder.user_features(ucat))
    ubias = torch.cat([p["personal.user_bias.weight"] for p in personal])
    nu = [len(j.data.users) for j in jobs]
    uvec, uoff = [], []
    for t, task in enumerate(tasks):
        pk, ok = f"personal.heads.{task}.proj", f"personal.heads.{task}.offset"
        heads = []
        for j, p in zip(jobs, personal):
            if pk in p:
                heads.append((p[pk], p[ok]))
            elif j.state.get(PERSONAL) is None and pk in pnames:  # a client's first evaluation: the initial heads
                first = first_personal(tasks, j.data, server_names)[0]  # (a log's numeric label: the client's own mean)
                heads.append((init[pk], torch.tensor(first[t], dtype=init[ok].dtype, device=dev) if t in first
                              else init[ok]))
            else:
                heads.append((model.personal.heads[task].proj, model.personal.heads[task].offset))
        if all(h[0] is heads[0][0] for h in heads):  # one head for all (aggregate=all): one product
            uvec.append(hu_all[t] @ heads[0][0])
        else:
            uvec.append(torch.cat([h @ proj for h, (proj, _) in zip(torch.split(hu_all[t], nu), heads)]))
        uoff.append(torch.cat([off.reshape(1).expand(n) for n, (_, off) in zip(nu, heads)]))
    scorer = _Scorer(tasks, uvec, uoff, ubias, ir, item_bias)
    data, ub, pb = _stacked(jobs)
    whole = _shared_rows(jobs)
    if whole is not None or all(j.item_item is None for j in jobs):
        blend, mixes = (None, None) if whole is None else blends_of(cfg, {
            k: Rows(torch.arange(m.shape[0], device=dev), torch.from_numpy(m).to(dev), sparse=True)
            for k, m in whole.items()})
        out = evaluate(scorer, data, tasks, item_item=blend, mixes=mixes, segments=(ub, pb))
    else:  # rows from different matrices (or none for some): each client with its own
        out = []
        for c, j in enumerate(jobs):
            rec = {k: v.take() if isinstance(v, RowsOf) else v for k, v in j.item_item.items()} if j.item_item else None
            blend, mixes = (None, None) if rec is None else item_item_blends(cfg, rec, dev)
            out.append(evaluate(scorer.users(int(ub[c]), int(ub[c + 1])), j.data, tasks, item_item=blend,
                                mixes=mixes))
    for part, a, b in zip(out, pb[:-1], pb[1:]):
        part["num-examples"] = int(b - a)
    return out
