"""What one client does with a training or an evaluation request, in plain values (no Flower).

    setup = run_setup(cfg)                      # once per process and config
    upload, metrics, state = train_client(setup, pid, data, shared, state, server_round)
    metrics = evaluate_client(setup, pid, data, shared, state, item_item)

`shared`: the server's arrays {name: ndarray}; `state`: the client's own state kept between
rounds, {"personal": {name: ndarray}, "weighting": {name: ndarray}} (either key absent before
its first round); `upload`: what the client sends back ({name: ndarray}: the shared
parameters, or exchange=sparse's packed update). The ClientApp (federation/client_app.py)
only moves these values in and out of Flower records; the cohort engine (engine/cohort.py)
trains many clients at once and must give the same values (fedmtl/cohort/).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np
import torch

from . import dp_rows
from .config_types import RunConfig
from .config import resolve_device
from .data import DATA_KEYS, ClientData, federation_for
from .itemitem import Rows, blends
from .local_rounds import client_round
from .model import build_model, get_arrays, personal_names, set_arrays, shared_names
from .seeds import client_round_seed, user_init_seed
from .tasks import choose_rows, click_candidates, configure as configure_tasks, first_offsets
from .train import TrainConfig, evaluate, train_config as make_train_config
from .transfer import new_items
from .weighting import build_weighting

PERSONAL, WEIGHTING = "personal", "weighting"  # the keys of a client's state


def train_config(cfg: RunConfig) -> TrainConfig:
    """A client's TrainConfig: the run's `train` group, local_epochs, FedProx's mu."""
    prox = cfg["strategy"].get("proximal_mu", 0.0) if cfg["strategy"]["name"] == "fedprox" else 0.0
    return make_train_config(cfg, cfg["local_epochs"], prox)


def client_seed(cfg: RunConfig, server_round: int, pid: int) -> int:
    """The seed of a client's round: its permutations, row set and rounding."""
    return client_round_seed(cfg["seed"], server_round, pid)


def model_key(cfg: RunConfig) -> str:
    keys = (*DATA_KEYS, "model", "tasks", "ranking")  # the template reads the federation too
    return json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True)


@lru_cache(maxsize=8)
def _template(cfg_key: str, n_users: int, device: str):
    cfg = json.loads(cfg_key)
    configure_tasks(cfg)  # a worker process's registry: the data set's labels as tasks
    fed = federation_for(cfg)
    model = build_model(cfg["model"], cfg["tasks"], n_users, np.zeros((n_users, len(fed.dataset.user_cards)), np.int64),
                        fed.meta, cfg["seed"]).to(device)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, init


@dataclass(frozen=True)
class RunSetup:
    """What every client of a run would otherwise re-derive from the config dict: the
    validated config, its device and train config, and (lazily) the federation's metadata
    and the model template."""

    cfg: RunConfig
    device: torch.device
    tcfg: TrainConfig
    key: str

    @property
    def meta(self) -> dict:
        """The federation's metadata: item count, feature cardinalities, item feature tables."""
        return federation_for(self.cfg).meta

    def template(self, n_users: int):
        """(the template model for clients of `n_users` users, its initial parameters)."""
        return _template(self.key, n_users, str(self.device))


@lru_cache(maxsize=8)
def _setup(cfg_json: str) -> RunSetup:
    cfg = json.loads(cfg_json)
    return RunSetup(cfg, resolve_device(cfg), train_config(cfg), model_key(cfg))


def run_setup(cfg: RunConfig) -> RunSetup:
    """The run setup of `cfg`, built once per process and config."""
    return _setup(json.dumps(cfg, sort_keys=True, default=str))


def init_user_emb(cfg: RunConfig, pid: int, shape) -> torch.Tensor:
    """A client's seeded initial user embeddings (its first round)."""
    gen = torch.Generator().manual_seed(user_init_seed(cfg["seed"], pid))
    return torch.randn(shape, generator=gen) * cfg["model"]["init_std"]


def first_personal(tasks, data: ClientData, shared=frozenset()) -> tuple[dict[int, float], dict[int, float]]:
    """`first_offsets` by where each starts: ({task index: value} of the head offsets, {task index:
    value} of the user-bias columns, for the tasks whose head offset is one of the `shared` names
    (aggregate=all: the server's))."""
    heads, biases = {}, {}
    for k, v in first_offsets(tasks, data).items():
        (biases if f"personal.heads.{tasks[k]}.offset" in shared else heads)[k] = v
    return heads, biases


def set_first_offsets(model, tasks, data: ClientData, shared=frozenset()) -> None:
    """`first_personal` set on a model just initialised."""
    heads, biases = first_personal(tasks, data, shared)
    with torch.no_grad():
        for k, v in heads.items():
            model.personal.heads[tasks[k]].offset.fill_(v)
        for k, v in biases.items():
            model.personal.user_bias.weight[:, k] = v


def client_model(setup: RunSetup, data: ClientData, personal: dict | None, pid: int):
    """The template model loaded with this client's personal parameters (or their
    seeded initial values on the client's first round)."""
    device = setup.device
    model, init = setup.template(len(data.users))
    with torch.no_grad():
        model.personal.user_cat = torch.as_tensor(data.user_cat, device=device)
        if personal is not None:
            set_arrays(model, personal)
        else:
            for n, p in model.named_parameters():
                p.copy_(init[n])
            model.personal.user_emb.weight.copy_(init_user_emb(setup.cfg, pid, model.personal.user_emb.weight.shape))
    if personal is None:
        set_first_offsets(model, setup.cfg["tasks"], data, set(shared_names(model, setup.cfg["aggregate"])))
    return model


def sparse_rows(cfg: RunConfig, data: ClientData, n_items: int, seed: int) -> np.ndarray | None:
    """exchange=sparse: this round's row set (own items + pad rows), fixed before training
    because the click loss runs over it; None for exchange=dense."""
    ex = cfg["exchange"]
    if ex["name"] != "sparse":
        return None
    return choose_rows(data.train_i.cpu().numpy(), n_items, int(ex.get("pad_rows", 0)),
                       np.random.default_rng([seed, 1]))


def upload_arrays(arrays: dict[str, np.ndarray], cfg: RunConfig, received: dict[str, np.ndarray] | None,
                  rows: np.ndarray | None, n_items: int, seed: int) -> dict[str, np.ndarray]:
    """What a client uploads from its trained shared `arrays`: them (dense), or (exchange=sparse,
    `rows` given) its update since `received`, row tables restricted to `rows` (sparse.py)."""
    if rows is None:
        return arrays
    from .sparse_codec import sparse_payload
    return sparse_payload(arrays, received, rows, n_items, cfg["exchange"]["dtype"], np.random.default_rng([seed, 2]))


def client_weighting(cfg: RunConfig, saved: dict | None):
    """The task weighting with its learned state (personal to the client) restored."""
    weighting = build_weighting(cfg["weighting"], cfg["tasks"])
    if saved:
        weighting.load_state_dict({k: torch.as_tensor(v) for k, v in saved.items()})
    return weighting


def weighting_state(weighting) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().numpy() for k, v in weighting.state_dict().items()}


def train_metrics(num_examples: int, losses: dict, weights: dict) -> dict:
    metrics = {"num-examples": num_examples}
    metrics.update({f"loss.{t}": v for t, v in losses.items()})
    metrics.update({f"weight.{t}": v for t, v in weights.items()})
    return metrics


def train_client(setup: RunSetup, pid: int, data: ClientData, shared: dict[str, np.ndarray], state: dict,
                 server_round: int) -> tuple[dict, dict, dict]:
    """One client's round: (upload, metrics, its new state)."""
    cfg = setup.cfg
    shared = dp_rows.without_indicator(shared)
    model = client_model(setup, data, state.get(PERSONAL), pid)
    set_arrays(model, shared)
    new_items.client_view(model, cfg)  # new items: features only, never trained
    weighting = client_weighting(cfg, state.get(WEIGHTING))
    seed = client_seed(cfg, server_round, pid)
    tcfg, rows, received = setup.tcfg, sparse_rows(cfg, data, model.n_items, seed), None
    if rows is not None:  # exchange=sparse: the click loss runs over the rows it will send
        received = get_arrays(model, shared_names(model, cfg["aggregate"]))
        tcfg = replace(tcfg, candidates=click_candidates(rows, data.train_i.cpu().numpy(), model.n_items,
                                                         data.train_i.device))
    result = client_round(model, data, cfg["tasks"], weighting, tcfg, cfg, seed=seed)
    new_state = {PERSONAL: get_arrays(model, personal_names(model, cfg["aggregate"]))}
    saved = weighting_state(weighting)
    if saved:
        new_state[WEIGHTING] = saved
    elif WEIGHTING in state:
        new_state[WEIGHTING] = state[WEIGHTING]
    upload = upload_arrays(get_arrays(model, shared_names(model, cfg["aggregate"])), cfg, received, rows,
                           model.n_items, seed)
    if dp_rows.enabled(cfg):  # its clipped update at full size and its row indicator (dp_rows.py)
        upload = dp_rows.client_upload(upload, shared, dp_rows.Budget.of(cfg))
    return upload, train_metrics(result.num_examples, result.losses, result.weights), new_state


def item_item_blends(cfg: RunConfig, record: dict[str, np.ndarray], device):
    """click_mix: (the run's blend, {grid group: blend}) from the rows of B the server sent
    ("b": at click_mix.lam; "grid@<lam>": the selection grid's, final evaluation only; "seq": the
    sequence score's S, click_mix.seq_weight)."""
    items = torch.from_numpy(record["items"]).to(device)
    return blends_of(cfg, {k: Rows(items, torch.from_numpy(v).to(device)) for k, v in record.items() if k != "items"})


def blends_of(cfg: RunConfig, rows: dict[str, Rows]):
    """`item_item_blends` from the record's keys as `Rows` ("b", "grid@<lam>", "seq")."""
    grid = {float(k.split("@", 1)[1]): v for k, v in rows.items() if k.startswith("grid@")}
    return blends(cfg, rows.get("b"), grid, rows.get("seq"))


def evaluate_client(setup: RunSetup, pid: int, data: ClientData, shared: dict[str, np.ndarray], state: dict,
                    item_item: dict[str, np.ndarray] | None = None) -> dict:
    """A client's additive metric parts on its test data; `item_item`: click_mix's rows of B."""
    cfg = setup.cfg
    shared = {k: v for k, v in shared.items() if k != dp_rows.ROW_COUNT}  # DP rows: the indicator's zeros
    model = client_model(setup, data, state.get(PERSONAL), pid)
    set_arrays(model, shared)
    new_items.client_view(model, cfg)
    blend, mixes = None, None
    if item_item is not None:  # click_mix: rows of the server's EASE weights (itemitem.py)
        blend, mixes = item_item_blends(cfg, item_item, data.train_u.device)
    part = evaluate(model, data, cfg["tasks"], item_item=blend, mixes=mixes)
    part.update(new_items.item_parts(model, data, cfg["tasks"], new_items.hidden_items(cfg)))
    part["num-examples"] = int(len(data.test_u))
    return part
