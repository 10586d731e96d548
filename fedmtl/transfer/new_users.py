"""New users' cold start: each new user fine-tunes its personal parts on its first k
interactions, the encoder frozen, starting from given shared arrays (the final ones, or
the untrained round-0 ones), and is scored on the interactions after the first max(k)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from ..config_types import RunConfig
from ..metrics import combine
from ..seeds import cold_start_seed
from .new_items import new_item_view


def _one_user_data(rows: pd.DataFrame, user_cat: np.ndarray, n_items: int, train_end: int, test_start: int):
    from ..data import ClientData
    tr, te = rows.iloc[:train_end], rows.iloc[test_start:]
    t = lambda a, dt=torch.long: torch.as_tensor(np.array(a), dtype=dt)  # noqa: E731
    return ClientData(users=np.zeros(1, np.int64), user_cat=user_cat, n_items=n_items,
                      train_u=t(np.zeros(len(tr))), train_i=t(tr["item"]), train_r=t(tr["rating"], torch.float32),
                      test_u=t(np.zeros(len(te))), test_i=t(te["item"]), test_r=t(te["rating"], torch.float32))


def fine_tune(model, data, cfg: RunConfig, epochs: int, seed: int):
    """A new user's fine-tuning on all its k interactions at once, the encoder frozen, with the
    run's fixed task weights (equal ones otherwise). `transfer.tune=user` trains only the
    user's embedding and biases (the heads stay as received), `personal` the heads too."""
    from ..model import personal_names
    from ..train import TrainConfig, local_train
    from ..weighting import build_weighting

    w, t, tasks = cfg["weighting"], cfg["train"], cfg["tasks"]
    wcfg = {"name": "fixed", "weights": w.get("weights", {})} if w["name"] == "fixed" else {"name": "fixed"}
    tc = TrainConfig(epochs=epochs, batch_size=max(data.n_train, 1), lr=t["lr"], l2=t["l2"],
                     click_loss=t["click_loss"], num_negatives=t["num_negatives"])
    names = personal_names(model, "encoder")
    if cfg["transfer"]["tune"] == "user":
        names = [n for n in names if n.startswith("personal.user_")]
    return local_train(model, data, tasks, build_weighting(wcfg, tasks), tc, seed=seed, trainable=names)


def cold_start(cfg: RunConfig, fed, arrays: dict[str, np.ndarray], ks, epochs: int, seed: int) -> dict[int, dict]:
    """Metrics per k of the new users, each fine-tuned alone from `arrays` (the shared
    arrays; heads too where the checkpoint holds them) with the encoder frozen."""
    from ..model import build_model, set_arrays
    from ..train import evaluate

    ks, kmax = sorted(set(ks)), max(ks)
    tasks, meta, hold = cfg["tasks"], fed.meta, fed.holdout
    model = build_model(cfg["model"], tasks, 1, np.zeros((1, len(meta["user_cards"])), np.int64), meta, cfg["seed"])
    set_arrays(model, {k: v for k, v in arrays.items() if k in dict(model.named_parameters())})
    new_item_view(model, hold.items, hide=False)
    with torch.no_grad():
        model.personal.user_emb.weight.zero_()  # the features alone until the user's own data says more
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    out = {}
    users = [(u, rows) for u, rows in hold.user_log.groupby("user", sort=True) if len(rows) > kmax]
    for k in ks:
        parts = []
        for u, rows in users:
            with torch.no_grad():
                for n, p in model.named_parameters():
                    p.copy_(base[n])
            model.personal.user_cat = torch.as_tensor(fed.dataset.user_cat[[u]])
            if k:
                fine_tune(model, _one_user_data(rows, fed.dataset.user_cat[[u]], meta["n_items"], k, kmax), cfg,
                          epochs, seed=cold_start_seed(seed, int(u), k))
            parts.append(evaluate(model, _one_user_data(rows, fed.dataset.user_cat[[u]], meta["n_items"], kmax, kmax),
                                  tasks))
        out[k] = combine(parts)
    return out


def reference_scores(scorer, fed, tasks, users_rows: list, kmax: int) -> dict:
    from ..train import evaluate
    parts = [evaluate(scorer, _one_user_data(rows, fed.dataset.user_cat[[u]], fed.meta["n_items"], kmax, kmax), tasks)
             for u, rows in users_rows]
    return combine(parts)


def initial_arrays(cfg: RunConfig, meta: dict) -> dict[str, np.ndarray]:
    """The untrained encoder: the seeded build every run starts from (no init.from)."""
    from ..model import build_model, get_arrays, shared_names
    model = build_model(cfg["model"], cfg["tasks"], 1, np.zeros((1, len(meta["user_cards"])), np.int64), meta,
                        cfg["seed"])
    return get_arrays(model, shared_names(model, cfg["aggregate"]))
