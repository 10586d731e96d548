"""Local training and evaluation of one client's data: plain PyTorch, no Flower.

The federated client, the local-only baseline and the centralised baseline all
call these two functions; they differ only in which users' data they pass.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import metrics as M
from .config_types import RunConfig
from .data import ClientData
from .errors import DataError
from .itemitem import blended, seq_history
from .tasks import choose_rows, click_candidates, losses as task_losses, pair_tasks, ranking_tasks


@dataclass
class TrainConfig:
    epochs: int = 1
    batch_size: int = 256
    lr: float = 0.01
    l2: float = 1e-4  # on the embedding rows a batch touches
    weight_decay: float = 0.0  # the optimisers' decay on every trainable parameter, embedding tables included
    personal_decay: float = 0.0  # more decay on the personal parameters only (Adam's, coupled): batched by cohort
    click_loss: str = "softmax"
    num_negatives: int = 20  # sampled: negatives per positive; sampled_softmax: random items beside the own ones
    prox_mu: float = 0.0  # FedProx: mu/2 * ||w_shared - w_global||^2
    optimizer: str = "adam"  # local optimiser of the shared parameters: adam | sgd
    shared_lr: float | None = None  # their learning rate; None = lr
    candidates: tuple | None = None  # (item ids, logit offsets): the click loss's items (exchange=sparse)


def train_config(cfg: RunConfig, epochs: int, prox_mu: float = 0.0) -> TrainConfig:
    """The TrainConfig of a run's `train` group (clients and baselines alike)."""
    t = cfg["train"]
    return TrainConfig(epochs=epochs, batch_size=t["batch_size"], lr=t["lr"], l2=t["l2"],
                       weight_decay=t["weight_decay"], personal_decay=t["personal_decay"],
                       click_loss=t["click_loss"],
                       num_negatives=t["num_negatives"], prox_mu=prox_mu,
                       optimizer=t["optimizer"], shared_lr=t["shared_lr"])


@dataclass
class TrainResult:
    num_examples: int
    losses: dict[str, float]
    weights: dict[str, float] = field(default_factory=dict)


def local_train(model, data: ClientData, tasks, weighting, cfg: TrainConfig, seed: int,
                shared: list[str] | None = None, trainable: list[str] | None = None) -> TrainResult:
    """Train `model` in place on `data` for `cfg.epochs` epochs.

    shared: names of the shared parameters (FedProx anchors them; gradient-based
    weightings work on them). trainable: restrict updates to these names (FedRep's
    phases, frozen encoders); None trains everything.
    """
    device = data.train_u.device
    model.attach(data)
    gen = torch.Generator(device="cpu").manual_seed(int(seed))
    params = dict(model.named_parameters())
    names = trainable if trainable is not None else list(params)
    for n, p in params.items():
        p.requires_grad_(n in names)
    shared = shared if shared is not None else [n for n in params if n.startswith("encoder.")]
    shared_params = [params[n] for n in shared if n in names]
    anchor = {n: params[n].detach().clone() for n in shared} if cfg.prox_mu > 0 else None
    shared_set = set(shared)
    opt = _optimizer(cfg, [params[n] for n in names if n in shared_set],
                     [params[n] for n in names if n not in shared_set] + list(weighting.parameters()))
    # the seen-item mask resamples uniform negatives; exchange=sparse draws them from its pads
    ranking = bool(ranking_tasks(tasks))
    mask = data.train_mask() if (cfg.click_loss == "sampled" and ranking and cfg.candidates is None) else None
    candidates = cfg.candidates
    if candidates is None and cfg.click_loss == "sampled_softmax" and ranking:
        # the data's own items and num_negatives random others, drawn once per call (a round)
        touched = data.train_i.cpu().numpy()
        rows = choose_rows(touched, model.n_items, cfg.num_negatives, np.random.default_rng([int(seed), 3]))
        candidates = click_candidates(rows, touched, model.n_items, device)
    n = data.n_train
    model.train()
    sums = {t: 0.0 for t in tasks}
    weights_sum = {t: 0.0 for t in tasks}
    steps = 0
    for _ in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen).to(device)
        epoch_sums = {t: 0.0 for t in tasks}
        epoch_steps = 0
        for start in range(0, n, cfg.batch_size):
            b = perm[start:start + cfg.batch_size]
            u, i, r = data.train_u[b], data.train_i[b], data.labels("train", b)
            opt.zero_grad(set_to_none=True)
            ls = task_losses(model, u, i, r, tasks, cfg.click_loss, cfg.num_negatives, mask,
                             gen if device.type == "cpu" else None, candidates=candidates)
            w = weighting.backward(ls, shared_params)
            reg = cfg.l2 * (model.personal.user_emb(u).pow(2).sum(-1).mean()
                            + model.encoder.item_emb(i).pow(2).sum(-1).mean())
            if getattr(model.encoder, "item_hist", None) is not None:  # model.history: its factors too
                reg = reg + cfg.l2 * model.encoder.item_hist(i).pow(2).sum(-1).mean()
            if anchor is not None:
                reg = reg + 0.5 * cfg.prox_mu * sum((params[k] - a).pow(2).sum() for k, a in anchor.items())
            if reg.requires_grad:
                reg.backward()
            opt.step()
            for t in tasks:
                epoch_sums[t] += float(ls[t].detach())
                weights_sum[t] += w[t]
            epoch_steps += 1
        weighting.end_epoch({t: epoch_sums[t] / max(epoch_steps, 1) for t in tasks})
        for t in tasks:
            sums[t] += epoch_sums[t]
        steps += epoch_steps
    for p in params.values():
        p.requires_grad_(True)
    steps = max(steps, 1)
    return TrainResult(n, {t: sums[t] / steps for t in tasks}, {t: weights_sum[t] / steps for t in tasks})


class _Optimizers:
    """Adam on the personal parameters; Adam or plain SGD (FedOpt's client step) on the shared ones."""

    def __init__(self, opts):
        self.opts = opts

    def zero_grad(self, set_to_none=True):
        for o in self.opts:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.opts:
            o.step()


def _optimizer(cfg: TrainConfig, shared: list, personal: list):
    lr_shared = cfg.shared_lr if cfg.shared_lr is not None else cfg.lr
    if cfg.optimizer == "adam":
        groups = [g for g in ({"params": shared, "lr": lr_shared},
                              {"params": personal, "weight_decay": cfg.weight_decay + cfg.personal_decay}) if g["params"]]
        return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, foreach=True)
    opts = []
    if shared:
        opts.append(torch.optim.SGD(shared, lr=lr_shared, weight_decay=cfg.weight_decay, foreach=True))
    if personal:
        opts.append(torch.optim.Adam(personal, lr=cfg.lr, weight_decay=cfg.weight_decay + cfg.personal_decay,
                                     foreach=True))
    return _Optimizers(opts)


def repeat_counts(task, data: ClientData) -> torch.Tensor:
    """What each train row adds to its user's count of the item for `ranking.repeat_weight`:
    1, or repeat_decay ** its age (the user's baskets, or events, after it) with repeat_decay < 1."""
    ones = torch.ones(len(data.train_u), device=data.train_u.device)
    if task.repeat_decay == 1.0:
        return ones
    if data.train_age is None:
        raise DataError(f"ranking.repeat_decay={task.repeat_decay}: these interactions have no timestamps to age "
                        "them by; set ranking.repeat_decay=1")
    return torch.pow(torch.full_like(ones, task.repeat_decay), data.train_age.to(ones.device))


@torch.no_grad()
def evaluate(model, data: ClientData, tasks, on: str = "test", item_item=None,
             mixes: dict | None = None, segments: tuple[np.ndarray, np.ndarray] | None = None):
    """Additive metric parts (see `metrics.combine`) of this data's test interactions.

    item_item: (B's `Rows`, weight[, Seq]) blends EASE item-item scores (and the sequence
    score) into the click ranking (itemitem.py); mixes: {group: blend}, more blends scored as
    "group/click.*". segments: (user bounds, pair bounds), both [C + 1], of C clients' data
    stacked in `data` (the cohort engine): a list of each client's parts, as this function
    gives them for that client's data alone (to float tolerance: the scores come from bigger
    matrix products)."""
    model.eval()
    if hasattr(model, "attach"):  # reference scorers (transfer/references.py) have no history to attach
        model.attach(data)
    u, i = (data.test_u, data.test_i) if on == "test" else (data.train_u, data.train_i)
    r = data.labels(on) if hasattr(data, "labels") else (data.test_r if on == "test" else data.train_r)
    ub, pb = segments if segments is not None else (np.array([0, len(data.users)]), np.array([0, len(u)]))
    parts: list[dict] = [{} for _ in range(len(ub) - 1)]
    live = [c for c in range(len(parts)) if pb[c + 1] > pb[c]]  # a client with no test pairs: no parts
    if not live:
        return parts if segments is not None else parts[0]
    pairs = pair_tasks(tasks)
    if pairs:
        s = model.pair_scores(u, i)
        for task in pairs:
            each = task.segment_parts(s[task.name], r, pb)
            for c in live:
                parts[c].update(each[c])
    for task in ranking_tasks(tasks):
        users = torch.arange(len(data.users), device=u.device)
        ir = model.item_reps()
        rankers = {"": item_item, **{f"{g}/": m for g, m in (mixes or {}).items()}}
        hr_all: dict = {p: [] for p in rankers}
        nd_all: dict = {p: [] for p in rankers}
        rc_all: dict = {p: [] for p in rankers}
        mask = data.train_mask()
        hist = seq_history(rankers, data)  # click_mix.seq_weight: the users' latest items (itemitem.history)
        seen = mask if task.exclude_seen else None  # ranking.exclude_seen=false: earlier items stay candidates
        if task.repeat_weight:
            counts = torch.zeros(mask.shape, device=mask.device).index_put_(
                (data.train_u, data.train_i), repeat_counts(task, data), accumulate=True)
        lists = data.test_lists()
        cand = getattr(data, "cand", None)  # split=leave_one_out: ranked among sampled negatives
        if cand is not None:  # its validation item, scored like the test item (grid blends: "valid_<group>/")
            rankers.update({"valid/": item_item, **{f"valid_{g}/": m for g, m in (mixes or {}).items()}})
            hr_all.update({p: [] for p in rankers if p.startswith("valid")})
            nd_all.update({p: [] for p in rankers if p.startswith("valid")})
            rc_all.update({p: [] for p in rankers if p.startswith("valid")})
        for s0 in range(0, len(users), 512):
            sl = slice(s0, s0 + 512)
            head = model.all_item_scores(users[sl], task.name, ir)
            if task.repeat_weight:  # ranking.repeat_weight: the user's own counts
                head = head + task.repeat_weight * torch.log1p(counts[sl])
            mixed = blended(head, mask[sl], {p: m for p, m in rankers.items() if m is not None},
                            None if hist is None else hist[sl])
            for prefix in rankers:
                if cand is None and task.recall:
                    hr, nd, rc = M.rank_metrics(mixed.get(prefix, head), None if seen is None else seen[sl],
                                                lists[sl], task.k, recall=True)
                    rc_all[prefix].append(rc)
                elif cand is None:
                    hr, nd = M.rank_metrics(mixed.get(prefix, head), None if seen is None else seen[sl], lists[sl],
                                            task.k)
                else:
                    hr, nd = M.sampled_rank_metrics(mixed.get(prefix, head),
                                                    cand["valid" if prefix.startswith("valid") else "test"][sl], task.k)
                hr_all[prefix].append(hr)
                nd_all[prefix].append(nd)
        has_test = np.array([len(x) > 0 for x in lists])
        for prefix in rankers:
            has = (cand["valid"][:, 0] >= 0).cpu().numpy() if prefix.startswith("valid") else has_test
            hr, nd = np.concatenate(hr_all[prefix]), np.concatenate(nd_all[prefix])
            rc = np.concatenate(rc_all[prefix]) if rc_all[prefix] else None
            name = prefix + task.name
            for c in live:
                sl = slice(int(ub[c]), int(ub[c + 1]))
                h = has[sl]
                parts[c].update({f"{name}.n": int(h.sum()), f"{name}.hr": float(hr[sl][h].sum()),
                                 f"{name}.ndcg": float(nd[sl][h].sum())})
                if rc is not None:
                    parts[c][f"{name}.recall"] = float(rc[sl][h].sum())
    return parts if segments is not None else parts[0]
