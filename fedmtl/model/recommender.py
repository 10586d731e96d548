"""The multi-task recommender.

    user u  ->  x_u = user_emb[u] (personal) + sum_f user_field_emb[f][cat_f(u)] (shared)
                      [+ |N(u)|^-1/2 sum_{j in N(u)} item_hist[j]   with model.history=true]
    item i  ->  x_i = item_emb[i] + item_field_emb[cat(i)] + genres(i) @ W   (shared)
    towers  ->  per task t: u_t = tower_u(x_u)[t], v_t = tower_v(x_i)[t]     (shared)
    head t  ->  s_t(u, i) = <P_t u_t, v_t> + offset_t + user_bias_t[u] + item_bias_t[i]

P_t, offset_t and user_bias live in `personal` (never leave a client by default);
everything under `encoder` is shared and aggregated. rating predicts s directly,
like uses it as a logit, click uses it as the logit of a softmax over all items.

model.history=true adds SVD++'s implicit-feedback term (Koren 2008; FISM, Kabbur
et al. 2013): a user is also the normalised sum of shared item factors over the
items N(u) in its own training data. The client holds N(u); only the factors of
the items it touched get gradients. In training a pair's own item is left out of
the sum (FISM's leave-one-out), so the model cannot score an item by recalling it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..tasks import REGISTRY
from .towers import ARCHITECTURES


class Encoder(nn.Module):
    def __init__(self, n_items, user_cards, item_cards, n_item_multi, item_cat, item_multi,
                 n_tasks, dim, architecture, arch_kwargs, init_std, history=False):
        super().__init__()
        self.item_emb = nn.Embedding(n_items, dim)
        self.item_hist = nn.Embedding(n_items, dim) if history else None
        self.item_bias = nn.Embedding(n_items, n_tasks)
        self.item_fields = nn.ModuleList(nn.Embedding(c, dim) for c in item_cards)
        self.item_genres = nn.Linear(n_item_multi, dim, bias=False) if n_item_multi else None
        self.user_fields = nn.ModuleList(nn.Embedding(c, dim) for c in user_cards)
        tower = ARCHITECTURES[architecture]
        self.user_tower = tower(dim=dim, n_tasks=n_tasks, **arch_kwargs)
        self.item_tower = tower(dim=dim, n_tasks=n_tasks, **arch_kwargs)
        # Item metadata is public: kept as buffers, never sent.
        self.register_buffer("item_cat", torch.as_tensor(item_cat, dtype=torch.long), persistent=False)
        self.register_buffer("item_multi", torch.as_tensor(item_multi, dtype=torch.float32), persistent=False)
        for emb in [self.item_emb, *self.item_fields, *self.user_fields] + ([self.item_hist] if history else []):
            nn.init.normal_(emb.weight, std=init_std)
        nn.init.zeros_(self.item_bias.weight)
        if self.item_genres is not None:
            nn.init.normal_(self.item_genres.weight, std=init_std)

    def item_input(self, items: torch.Tensor | None = None) -> torch.Tensor:
        idx = items if items is not None else torch.arange(self.item_emb.num_embeddings, device=self.item_emb.weight.device)
        x = self.item_emb(idx)
        for f, emb in enumerate(self.item_fields):
            x = x + emb(self.item_cat[idx, f])
        if self.item_genres is not None:
            x = x + self.item_genres(self.item_multi[idx])
        return x

    def user_features(self, user_cat: torch.Tensor) -> torch.Tensor:
        x = 0
        for f, emb in enumerate(self.user_fields):
            x = x + emb(user_cat[..., f])
        return x


class Personal(nn.Module):
    """What a client keeps for itself: its users' embeddings and biases, and the heads."""

    def __init__(self, n_users, user_cat, tasks, dim, init_std):
        super().__init__()
        self.user_emb = nn.Embedding(n_users, dim)
        self.user_bias = nn.Embedding(n_users, len(tasks))
        nn.init.normal_(self.user_emb.weight, std=init_std)
        nn.init.zeros_(self.user_bias.weight)
        self.heads = nn.ModuleDict({t: Head(dim, REGISTRY[t].head_offset if t in REGISTRY else 0.0) for t in tasks})
        self.register_buffer("user_cat", torch.as_tensor(user_cat, dtype=torch.long), persistent=False)
        self.history: torch.Tensor | None = None  # [n_users, n_items] 0/1 of the users' training items


class Head(nn.Module):
    """A task's projection (identity at start) and offset."""

    def __init__(self, dim: int, offset: float):
        super().__init__()
        self.proj = nn.Parameter(torch.eye(dim))
        self.offset = nn.Parameter(torch.tensor(float(offset)))


class MultiTaskRecommender(nn.Module):
    def __init__(self, tasks, n_users, user_cat, dataset_meta, dim=32, architecture="shared_bottom",
                 arch_kwargs=None, init_std=0.1, history=False):
        super().__init__()
        self.tasks = list(tasks)
        m = dataset_meta
        self.encoder = Encoder(m["n_items"], m["user_cards"], m["item_cards"], m["item_multi"].shape[1],
                               m["item_cat"], m["item_multi"], len(self.tasks), dim, architecture,
                               dict(arch_kwargs or {}), init_std, history)
        self.personal = Personal(n_users, user_cat, self.tasks, dim, init_std)

    @property
    def n_items(self) -> int:
        return self.encoder.item_emb.num_embeddings

    def attach(self, data) -> None:
        """Give the model its users' training items (model.history=true; else a no-op)."""
        if self.encoder.item_hist is not None:
            self.personal.history = data.train_mask().float()

    def user_reps(self, users: torch.Tensor, leave_out: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Each task's user representation; `leave_out`: each row's item, dropped from its history."""
        x = self.personal.user_emb(users) + self.encoder.user_features(self.personal.user_cat[users])
        if self.encoder.item_hist is not None:
            if self.personal.history is None:
                raise RuntimeError("model.history=true: call model.attach(data) before using the model")
            h = self.personal.history[users]
            s, n = h @ self.encoder.item_hist.weight, h.sum(1)
            if leave_out is not None:
                own = h.gather(1, leave_out.unsqueeze(1)).squeeze(1)
                s, n = s - own.unsqueeze(1) * self.encoder.item_hist(leave_out), n - own
            x = x + s * n.clamp(min=1.0).rsqrt().unsqueeze(1)
        return self.encoder.user_tower(x)

    def item_reps(self, items: torch.Tensor | None = None) -> list[torch.Tensor]:
        return self.encoder.item_tower(self.encoder.item_input(items))

    def pair_scores(self, users: torch.Tensor, items: torch.Tensor) -> dict[str, torch.Tensor]:
        """s_t(u, i) for aligned vectors of users and items, for every task."""
        ur, ir = self.user_reps(users), self.item_reps(items)
        out = {}
        for t, task in enumerate(self.tasks):
            head = self.personal.heads[task]
            out[task] = ((ur[t] @ head.proj) * ir[t]).sum(-1) + head.offset \
                + self.personal.user_bias(users)[:, t] + self.encoder.item_bias(items)[:, t]
        return out

    def all_item_scores(self, users: torch.Tensor, task: str, item_reps=None) -> torch.Tensor:
        """[len(users), n_items] scores of one task (the full-ranking path)."""
        t = self.tasks.index(task)
        head = self.personal.heads[task]
        ir = item_reps if item_reps is not None else self.item_reps()
        u = self.user_reps(users)[t] @ head.proj
        return u @ ir[t].T + self.encoder.item_bias.weight[:, t] + self.personal.user_bias(users)[:, t:t + 1] + head.offset


def build_model(cfg_model: dict, tasks, n_users: int, user_cat, meta: dict, seed: int) -> MultiTaskRecommender:
    """Build with a fixed seed so every client starts from the same initial weights."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        kwargs = {k: v for k, v in cfg_model.items() if k not in ("name", "dim", "init_std", "history")}
        return MultiTaskRecommender(tasks, n_users, user_cat, meta, dim=cfg_model["dim"],
                                    architecture=cfg_model["name"], arch_kwargs=kwargs,
                                    init_std=cfg_model.get("init_std", 0.1),
                                    history=bool(cfg_model.get("history", False)))
    finally:
        torch.random.set_rng_state(gen_state)
