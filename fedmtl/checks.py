"""Checks of one config value, each stopping at a wrong one with a one-line ConfigError
that names the key and what it allows. `fedmtl.config.validate` and the group checks
beside each part's code (data/split.py, itemitem.py, privacy_floor.py, transfer) use them."""

from __future__ import annotations

from .errors import ConfigError

# Keys added after runs were already written. A config without one (the config.json of a
# resumed or deployed run, an init.from checkpoint's) gets the value that reproduces what
# runs did before the key; a block gets its keys. Every other default is conf/'s, and only
# conf/'s (tests/test_defaults.py holds the code to that).
BEFORE_KEY = {
    "model.history": False,
    "train.optimizer": "adam",
    "train.shared_lr": None,
    "train.personal_decay": 0.0,  # conf/: 0.05, since the synthetic default run overfitted
    "on_client_failure": "continue",
    "server_decay": 0.0,
    "average_last": 0,
    "split.name": "per_user",
    "ranking": {"k": 10, "exclude_seen": True, "recall": None, "repeat_weight": 0.0, "repeat_decay": 1.0},
    "faults": {"drop_rate": 0.0, "straggler_rate": 0.0, "straggler_delay": None, "seed": None},
    "server_lr": {"schedule": "constant", "final": 0.0},
    "eval": {"negatives": 99},
    "click_mix": {"weight": 0.0, "lam": 500.0, "grid_weight": [], "grid_lam": [], "dp_clip": 20.0,
                  "dp_noise_multiplier": 1.0, "secure_gram_mb": 1024, "seq_weight": 0.0, "seq_window": 10, "seq_last": 5,
                  "seq_decay": 0.7},
    "client_floor": {"privacy": "none", "gram": True, "sparse": True, "min_noise_multiplier": 0.0,
                     "secagg_min_threshold": 2},
    "init": {"from": None, "freeze_encoder": False},
    "transfer": {"new_users": 0.0, "new_items": 0.0, "k": [0, 1, 5, 10, 20], "epochs": 20, "seed": None,
                 "tune": "user"},
    "robust": {"max_abs_update": 100.0, "max_weight": None, "max_update_norm": None, "on_large_update": "reject"},
}


def backfill(cfg: dict) -> None:
    """Give `cfg` the BEFORE_KEY values of the keys it lacks (in place)."""
    import copy

    for key, value in BEFORE_KEY.items():
        *parents, last = key.split(".")
        node = cfg
        for part in parents:
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict):
            continue
        if last not in node:
            node[last] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(node[last], dict):
            for k, v in value.items():
                node[last].setdefault(k, copy.deepcopy(v))


def choice(cfg: dict, key: str, allowed) -> None:
    value = get(cfg, key)
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(f"{key}={value}: expected one of {list(allowed)}")


def get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{key}: missing from the config")
        node = node[part]
    return node


def number(cfg: dict, key: str, lo=None, hi=None, integer=False, lo_open=False, hi_open=False) -> None:
    value = get(cfg, key)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{key}={value!r}: expected {'an integer' if integer else 'a number'}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{key}={value}: must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and (value >= hi if hi_open else value > hi):
        raise ConfigError(f"{key}={value}: must be {'<' if hi_open else '<='} {hi}")


def block(cfg: dict, name: str) -> dict:
    """cfg[name], a block of the keys BEFORE_KEY[name] lists (backfill gave it those it
    lacked): unknown keys and a non-block are refused."""
    value, keys = cfg.get(name), ", ".join(BEFORE_KEY[name])
    if not isinstance(value, dict):
        raise ConfigError(f"{name}={value!r}: expected a block with {keys}")
    unknown = set(value) - set(BEFORE_KEY[name])
    if unknown:
        key = str(sorted(unknown, key=str)[0])
        shown = key if key.isprintable() else repr(key)  # one line, whatever the key holds
        raise ConfigError(f"{name}.{shown}: unknown key (expected {keys})")
    return value
