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

from .. import client_step
from ..config_types import RunConfig
from ..client_step import sparse_rows  # noqa: F401 (the ClientApp's and tests' name for it)
from ..data import ClientData
from ..weighting import build_weighting
from ..model import get_arrays, personal_names, set_arrays, shared_names

PERSONAL_KEY, WEIGHTING_KEY = client_step.PERSONAL, client_step.WEIGHTING  # a node's Context.state keys


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


def client_model(cfg: RunConfig, data: ClientData, state: RecordDict, pid: int):
    """The template model loaded with this client's personal parameters (or their
    seeded initial values on the client's first round): client_step.client_model."""
    personal = {k: v.numpy() for k, v in state[PERSONAL_KEY].items()} if PERSONAL_KEY in state else None
    return client_step.client_model(client_step.run_setup(cfg), data, personal, pid)


def save_personal(model, cfg: RunConfig, state: RecordDict) -> None:
    arrays = get_arrays(model, personal_names(model, cfg["aggregate"]))
    state[PERSONAL_KEY] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def shared_record(model, cfg: RunConfig, received: dict[str, np.ndarray] | None = None, rows: np.ndarray | None = None,
                  seed: int = 0) -> ArrayRecord:
    """What a client uploads (client_step.upload_arrays), as a record."""
    arrays = client_step.upload_arrays(get_arrays(model, shared_names(model, cfg["aggregate"])), cfg, received, rows,
                                       model.n_items, seed)
    return ArrayRecord({k: Array(v) for k, v in arrays.items()})


_last_decoded: list = [None, None]  # (record, arrays): the record every client of a round shares


def shared_values(record: ArrayRecord) -> dict[str, np.ndarray]:
    """The server's arrays as NumPy. In one process every sampled client receives the same
    record object, so it is decoded once per round instead of once per client."""
    if _last_decoded[0] is not record:
        _last_decoded[0], _last_decoded[1] = record, {k: v.numpy() for k, v in record.items()}
    return _last_decoded[1]


def load_shared(model, record: ArrayRecord) -> None:
    """Load the server's arrays into `model`."""
    set_arrays(model, shared_values(record))


def state_values(state: RecordDict) -> dict:
    """A node's Context.state as client_step's plain state."""
    return {key: {k: v.numpy() for k, v in state[key].items()} for key in (PERSONAL_KEY, WEIGHTING_KEY) if key in state}


def store_state(state: RecordDict, values: dict) -> None:
    """client_step's plain state back into a node's Context.state."""
    for key, arrays in values.items():
        state[key] = ArrayRecord({k: Array(v) for k, v in arrays.items()})


def client_weighting(cfg: RunConfig, state: RecordDict):
    """The task weighting with its learned state (personal to the client) restored."""
    weighting = build_weighting(cfg["weighting"], cfg["tasks"])
    if WEIGHTING_KEY in state:
        weighting.load_state_dict({k: torch.as_tensor(v.numpy()) for k, v in state[WEIGHTING_KEY].items()})
    return weighting


def save_weighting(weighting, state: RecordDict) -> None:
    sd = weighting.state_dict()
    if sd:
        state[WEIGHTING_KEY] = ArrayRecord({k: Array(v.detach().cpu().numpy()) for k, v in sd.items()})
