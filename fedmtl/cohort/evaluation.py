"""A cohort's evaluation (`evaluate_cohort`): the shared model's item representations once for
all, every client's users through the user tower at once, then each client's own metrics
(train.evaluate) from those, as client_step.evaluate_client gives them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..client_step import PERSONAL, RunSetup, init_user_emb
from ..data import ClientData
from ..model import personal_names


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

    from ..client_step import item_item_blends
    from ..model import set_arrays
    from ..train import evaluate

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
