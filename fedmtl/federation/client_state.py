"""A client's model between Flower records and the core.

Personal parameters (user embeddings and biases, and the heads unless
`aggregate=all`) live in the client's persisted `Context.state`; shared ones
arrive in each message. One template model per process and per client size is
reused so 943 clients do not build 943 models.
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, RecordDict

from ..config import resolve_device
from ..data import ClientData, federation_for
from ..weighting import build_weighting
from ..model import build_model, get_arrays, personal_names, set_arrays, shared_names
from ..tasks import choose_rows

PERSONAL_KEY = "personal"
WEIGHTING_KEY = "weighting"


def config_from_context(context: Context, bound: dict | None) -> dict:
    """The run's config: bound into the app by `simulate`, or read from the run config
    of a deployed run (`flwr run ... --run-config 'fedmtl-config="..."'`)."""
    if bound is not None:
        return bound
    rc = context.run_config
    if rc.get("fedmtl-config"):
        return json.loads(_validated_json(str(rc["fedmtl-config"])))
    return _composed(str(rc.get("overrides", "")))


@lru_cache(maxsize=4)
def _validated_json(text: str) -> str:
    """A run config's `fedmtl-config` (a whole config as JSON, written by the server's
    side), checked like a command line before this client uses any of it."""
    from ..config import validate
    from ..errors import ConfigError

    try:
        cfg = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"run config fedmtl-config: not a JSON config ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"run config fedmtl-config: expected a JSON object, got {type(cfg).__name__}")
    try:
        return json.dumps(validate(cfg))
    except ConfigError as e:
        raise ConfigError(f"run config fedmtl-config: {e}") from None


@lru_cache(maxsize=4)
def _composed_json(overrides: str) -> str:
    import shlex
    from ..config import compose

    return json.dumps(compose(shlex.split(overrides)))


def _composed(overrides: str) -> dict:
    """The Hydra overrides of a deployed run (as on the simulate command line), composed
    once per process; a fresh copy each call."""
    return json.loads(_composed_json(overrides))


@lru_cache(maxsize=8)
def _template(cfg_key: str, n_users: int, device: str):
    cfg = json.loads(cfg_key)
    fed = federation_for(cfg)
    model = build_model(cfg["model"], cfg["tasks"], n_users, np.zeros((n_users, len(fed.dataset.user_cards)), np.int64),
                        fed.meta, cfg["seed"]).to(device)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    return model, init


def model_key(cfg: dict) -> str:
    keys = ("dataset", "split", "num_clients", "seed", "model", "tasks")
    return json.dumps({k: cfg[k] for k in keys}, sort_keys=True)


def client_model(cfg: dict, data: ClientData, state: RecordDict, pid: int):
    """The template model loaded with this client's personal parameters (or their
    seeded initial values on the client's first round)."""
    device = resolve_device(cfg)
    model, init = _template(model_key(cfg), len(data.users), device)
    with torch.no_grad():
        model.personal.user_cat = torch.as_tensor(data.user_cat, device=device)
        if PERSONAL_KEY in state:
            set_arrays(model, {k: v.numpy() for k, v in state[PERSONAL_KEY].items()})
        else:
            for n, p in model.named_parameters():
                p.copy_(init[n])
            gen = torch.Generator().manual_seed(cfg["seed"] * 1_000_003 + pid)
            std = cfg["model"].get("init_std", 0.1)
            model.personal.user_emb.weight.copy_(torch.randn(model.personal.user_emb.weight.shape, generator=gen) * std)
    return model


def save_personal(model, cfg: dict, state: RecordDict) -> None:
    arrays = get_arrays(model, personal_names(model, cfg["aggregate"]))
    state[PERSONAL_KEY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def sparse_rows(cfg: dict, data: ClientData, n_items: int, seed: int) -> np.ndarray | None:
    """exchange=sparse: this round's row set (own items + pad rows), fixed before training
    because the click loss runs over it; None for exchange=dense."""
    ex = cfg.get("exchange", {}) or {}
    if ex.get("name", "dense") != "sparse":
        return None
    return choose_rows(data.train_i.cpu().numpy(), n_items, int(ex.get("pad_rows", 0)),
                       np.random.default_rng([seed, 1]))


def shared_record(model, cfg: dict, received: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None,
                  seed: int = 0) -> ArrayRecord:
    """What a client uploads: the shared parameters, dense, or (exchange=sparse, `rows`
    given) its update on them since `received`, row tables restricted to `rows` (sparse.py)."""
    arrays = get_arrays(model, shared_names(model, cfg["aggregate"]))
    if rows is not None:
        from .sparse import sparse_payload
        ex = cfg.get("exchange", {}) or {}
        arrays = sparse_payload(arrays, received, rows, model.n_items,
                                ex.get("dtype", "float32"), np.random.default_rng([seed, 2]))
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


_last_decoded: list = [None, None]  # (record, arrays): the record every client of a round shares


def load_shared(model, record: ArrayRecord) -> None:
    """Load the server's arrays. In one process every sampled client receives the same
    record object, so it is decoded once per round instead of once per client."""
    if _last_decoded[0] is not record:
        _last_decoded[0], _last_decoded[1] = record, {k: v.numpy() for k, v in record.items()}
    set_arrays(model, _last_decoded[1])


def client_weighting(cfg: dict, state: RecordDict):
    """The task weighting with its learned state (personal to the client) restored."""
    weighting = build_weighting(cfg["weighting"], cfg["tasks"])
    if WEIGHTING_KEY in state:
        weighting.load_state_dict({k: torch.as_tensor(v.numpy()) for k, v in state[WEIGHTING_KEY].items()})
    return weighting


def save_weighting(weighting, state: RecordDict) -> None:
    sd = weighting.state_dict()
    if sd:
        state[WEIGHTING_KEY] = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in sd.items()})
