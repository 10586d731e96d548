"""The config: composed by Hydra from conf/, checked once here.

`validate` turns a composed config into a plain dict and stops at the first wrong
value with a one-line `ConfigError` that names the key and what it allows.
"""

from __future__ import annotations

import json
from pathlib import Path

from .errors import ConfigError
from .tasks import check_tasks

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"

MODES = ("federated", "centralized", "local")
AGGREGATE = ("encoder", "all", "fedrep")
DEVICES = ("auto", "cpu", "cuda")
CLICK_LOSSES = ("softmax", "sampled")
EXCHANGES = ("dense", "sparse")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> dict:
    """Compose conf/ with Hydra outside `python -m fedmtl.simulate` (tests, deployed apps)."""
    from hydra import compose as hcompose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf

    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            dcfg = hcompose(config_name=config_name, overrides=list(overrides or []))
    except HydraException as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(" ".join(lines[:2])) from None
    cfg = OmegaConf.to_container(dcfg, resolve=True)
    cfg.pop("hydra", None)
    return validate(cfg)


def _choice(cfg: dict, key: str, allowed) -> None:
    value = _get(cfg, key)
    if value not in allowed:
        raise ConfigError(f"{key}={value}: expected one of {list(allowed)}")


def _get(cfg: dict, key: str):
    node = cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(f"{key}: missing from the config")
        node = node[part]
    return node


def _number(cfg: dict, key: str, lo=None, hi=None, integer=False, lo_open=False) -> None:
    value = _get(cfg, key)
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type:
        raise ConfigError(f"{key}={value!r}: expected {'an integer' if integer else 'a number'}")
    if lo is not None and (value <= lo if lo_open else value < lo):
        raise ConfigError(f"{key}={value}: must be {'>' if lo_open else '>='} {lo}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key}={value}: must be <= {hi}")


def validate(cfg: dict) -> dict:
    from .data import DATASETS
    from .federation_names import BACKENDS, PRIVACY, STRATEGIES
    from .model.towers import ARCHITECTURES
    from .weighting import REGISTRY as WEIGHTINGS, build_weighting

    cfg = json.loads(json.dumps(cfg))  # a plain, JSON-safe copy
    _choice(cfg, "mode", MODES)
    _choice(cfg, "exchange.name", EXCHANGES)
    if cfg["exchange"]["name"] == "sparse":
        _number(cfg, "exchange.pad_rows", lo=0, integer=True)
        if str(cfg["privacy"]["name"]).startswith("secagg"):
            raise ConfigError(f"exchange=sparse with privacy={cfg['privacy']['name']}: SecAgg+ sums dense vectors "
                              "of one length from every client; use exchange=dense")
    cfg["tasks"] = check_tasks(_get(cfg, "tasks"))
    _choice(cfg, "aggregate", AGGREGATE)
    _choice(cfg, "device", DEVICES)
    _choice(cfg, "dataset.name", DATASETS)
    _choice(cfg, "model.name", ARCHITECTURES)
    _choice(cfg, "weighting.name", WEIGHTINGS)
    build_weighting(cfg["weighting"], cfg["tasks"])  # its options, now rather than in every client
    _choice(cfg, "strategy.name", STRATEGIES)
    _choice(cfg, "privacy.name", PRIVACY)
    _choice(cfg, "backend.name", BACKENDS)
    _choice(cfg, "train.click_loss", CLICK_LOSSES)
    for key in ("num_clients", "num_rounds", "local_epochs", "eval_every", "model.dim", "train.batch_size"):
        _number(cfg, key, lo=1, integer=True)
    for key in ("seed", "min_train_clients", "min_evaluate_clients", "train.num_negatives"):
        _number(cfg, key, lo=0, integer=True)
    for key in ("fraction_train", "fraction_evaluate"):
        _number(cfg, key, lo=0, hi=1, lo_open=True)
    _number(cfg, "train.lr", lo=0, lo_open=True)
    _number(cfg, "train.l2", lo=0)
    _number(cfg, "train.weight_decay", lo=0)
    _number(cfg, "split.train_frac", lo=0, hi=1, lo_open=True)
    if cfg.get("baseline_epochs") is not None:
        _number(cfg, "baseline_epochs", lo=1, integer=True)
    if cfg["split"].get("seed") is None:
        cfg["split"]["seed"] = cfg["seed"]
    if cfg["dataset"]["name"] != "synthetic" and not cfg["dataset"].get("path"):
        raise ConfigError(f"dataset.path: dataset={cfg['dataset']['name']} needs the folder of its files, "
                          "e.g. dataset.path=data/ml-100k")
    from .transfer import validate_config as validate_transfer
    validate_transfer(cfg)  # init.* and transfer.*
    if cfg["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda: no CUDA device is visible to torch (use device=auto or cpu)")
    return cfg


def resolve_device(cfg: dict) -> str:
    import torch
    if cfg["device"] == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg["device"]
