"""The init.* and transfer.* config keys checked (called from `config.validate`, after its
backfill)."""

from __future__ import annotations

from ..checks import BEFORE_KEY
from ..errors import ConfigError
from ..tasks import dataset_labels

GRADIENT_WEIGHTINGS = ("gradnorm", "pcgrad")  # they need trainable shared parameters
TUNE = ("user", "personal")  # what a new user fine-tunes: its embedding and biases, or the heads too


def validate_config(cfg: dict) -> None:
    """The init.* and transfer.* keys (called from `config.validate`)."""
    for key in ("init", "transfer"):
        if cfg[key] is None:  # null: the block as a config written before it
            cfg[key] = dict(BEFORE_KEY[key])
        if not isinstance(cfg[key], dict):
            raise ConfigError(f"{key}={cfg[key]!r}: expected a mapping of {key}.* keys")
    init, t = cfg["init"], cfg["transfer"]
    if t["tune"] not in TUNE:
        raise ConfigError(f"transfer.tune={t['tune']}: expected one of {list(TUNE)}")
    if not isinstance(init["freeze_encoder"], bool):
        raise ConfigError(f"init.freeze_encoder={init['freeze_encoder']!r}: expected true or false")
    if init["freeze_encoder"] and cfg["weighting"]["name"] in GRADIENT_WEIGHTINGS:
        raise ConfigError(f"init.freeze_encoder=true with weighting={cfg['weighting']['name']}: it weighs gradients "
                          "on the shared encoder, which is frozen; use fixed, uncertainty or dwa")
    if init["from"] is not None and not isinstance(init["from"], str):
        raise ConfigError(f"init.from={init['from']!r}: expected the path of a run folder, or null")
    if init["from"]:
        from ..model import saved
        saved.load(init["from"])  # exists and reads, now rather than after the data is loaded
    for key in ("new_users", "new_items"):
        v = t[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < 1:
            raise ConfigError(f"transfer.{key}={v!r}: expected a fraction in [0, 1)")
    ks = t["k"]
    if not isinstance(ks, list) or not ks or any(isinstance(k, bool) or not isinstance(k, int) or k < 0 for k in ks):
        raise ConfigError(f"transfer.k={ks!r}: expected a list of integers >= 0, e.g. [0,1,5,10,20]")
    if t["seed"] is not None and (isinstance(t["seed"], bool) or not isinstance(t["seed"], int) or t["seed"] < 0):
        raise ConfigError(f"transfer.seed={t['seed']!r}: expected an integer >= 0, or null")
    if isinstance(t["epochs"], bool) or not isinstance(t["epochs"], int) or t["epochs"] < 1:
        raise ConfigError(f"transfer.epochs={t['epochs']!r}: expected an integer >= 1")
    if t["new_users"] and not cfg["save_model"]:
        raise ConfigError("transfer.new_users needs save_model=true: the new users start from the saved encoder")
    if (t["new_users"] or t["new_items"]) and dataset_labels(cfg["dataset"]) is not None:
        key = "new_users" if t["new_users"] else "new_items"
        raise ConfigError(f"transfer.{key} with dataset={cfg['dataset']['name']}: cold-start evaluation (its popularity "
                          "and random references) knows rating logs only (synthetic, movielens100k, movielens1m); "
                          "not supported on interaction logs yet")
