"""The config: composed by Hydra from conf/, checked once here.

`validate` turns a composed config into a plain dict and stops at the first wrong
value with a one-line `ConfigError` that names the key and what it allows.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from .config_types import RunConfig
from .checks import BEFORE_KEY, backfill, block, choice, get, number
from .errors import ConfigError
from .tasks import REGISTRY as TASK_REGISTRY, check_tasks, configure as configure_tasks

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
SIMULATIONS_DIR = CONF_DIR.parent / "simulations"  # experiment= presets (hydra.searchpath in conf/config.yaml)



def _has_ranking(names) -> bool:
    """Whether `names` holds a ranking task (click, purchase: the click loss's knobs apply)."""
    return any(n in TASK_REGISTRY and not TASK_REGISTRY[n].pairwise for n in names if isinstance(n, str))

def _register_resolvers() -> None:
    from omegaconf import OmegaConf
    if not OmegaConf.has_resolver("fedmtl.simulations"):
        OmegaConf.register_new_resolver("fedmtl.simulations", lambda: f"file://{SIMULATIONS_DIR}")


_register_resolvers()

MODES = ("federated", "centralized", "local")
DEVICES = ("auto", "cpu", "cuda")
CLICK_LOSSES = ("softmax", "sampled_softmax", "sampled")
EXCHANGES = ("dense", "sparse")


def compose(overrides: list[str] | None = None, config_name: str = "config") -> RunConfig:
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


# Ranges of the strategies' hyper-parameters (conf/strategy/*.yaml): checked at start-up,
# since Flower's classes take any value and fail (or diverge) only when they aggregate.
STRATEGY_RANGES = {
    "eta": dict(lo=0, lo_open=True), "tau": dict(lo=0, lo_open=True),
    "beta_1": dict(lo=0, hi=1), "beta_2": dict(lo=0, hi=1),
    "server_learning_rate": dict(lo=0, lo_open=True), "server_momentum": dict(lo=0, hi=1),
    "proximal_mu": dict(lo=0), "beta": dict(lo=0, hi=0.49),
}


@lru_cache(maxsize=4)
def _option_keys(group: str) -> dict[str, frozenset]:
    """Each option's hyper-parameters in a config group: the keys of its conf/<group>/<name>.yaml."""
    import yaml

    out = {}
    for f in sorted((CONF_DIR / group).glob("*.yaml")):
        out[f.stem] = frozenset((yaml.safe_load(f.read_text()) or {}).keys()) - {"name"}
    return out


def _drop_other_options(cfg: dict, group: str) -> None:
    """A key of `group` (strategy, weighting) that belongs to another of its options (a preset's
    FedAdam eta under `strategy=fedavg`, its fixed `weighting.weights` under
    `weighting=uncertainty`) is dropped with one warning, so that switching the option over a
    preset is one override; a key no option has is an error."""
    import logging

    known = _option_keys(group)
    name = cfg[group]["name"]
    own, anyone = known.get(name, frozenset()), frozenset().union(*known.values())
    for key in list(cfg[group]):
        if key == "name" or key in own:
            continue
        if key in anyone:
            logging.getLogger("fedmtl").warning("%s.%s=%s is not a hyper-parameter of %s=%s (it has %s): dropped",
                                                group, key, cfg[group][key], group, name,
                                                ", ".join(sorted(own)) or "none")
            del cfg[group][key]
        else:
            raise ConfigError(f"{group}.{key}: unknown key for {group}={name} (it takes "
                              f"{', '.join(sorted(own)) or 'no hyper-parameters'})")


def _strategy_options(cfg: dict) -> None:
    """The strategy's hyper-parameters, in range (another strategy's keys dropped: _drop_other_options)."""
    _drop_other_options(cfg, "strategy")
    for key in cfg["strategy"]:
        if key != "name":
            number(cfg, f"strategy.{key}", **STRATEGY_RANGES.get(key, {}))


def check_server_lr(cfg: dict) -> None:
    from .knob_names import SERVER_LR_SCHEDULES, SERVER_RATE
    sched = block(cfg, "server_lr")
    choice(cfg, "server_lr.schedule", SERVER_LR_SCHEDULES)
    number(cfg, "server_lr.final", lo=0, hi=1)
    name = cfg["strategy"]["name"]
    if sched["schedule"] != "constant" and name not in SERVER_RATE:
        raise ConfigError(f"server_lr.schedule={sched['schedule']} with strategy={name}: it has no server learning "
                          f"rate to schedule; use one of {sorted(SERVER_RATE)}")


def validate(cfg: dict) -> RunConfig:
    from .data import DATASETS, GENERATED, LOG_DATASETS
    from .knob_names import BACKENDS, PRIVACY, STRATEGIES
    from .model.parts import AGGREGATE_MODES
    from .model.towers import ARCHITECTURES
    from .weighting import REGISTRY as WEIGHTINGS, build_weighting

    cfg = json.loads(json.dumps(cfg))  # a plain, JSON-safe copy
    backfill(cfg)  # the keys a config written before them lacks (checks.BEFORE_KEY)
    choice(cfg, "mode", MODES)
    choice(cfg, "exchange.name", EXCHANGES)
    if cfg["exchange"]["name"] == "sparse":
        number(cfg, "exchange.pad_rows", lo=0, integer=True)
        choice(cfg, "exchange.dtype", ("float32", "float16", "int8"))
        from .knob_names import CLIENT_DP_MODES
        mode = get(cfg, "privacy.name")
        if mode not in ("none", "secagg", *CLIENT_DP_MODES):
            raise ConfigError(f"exchange=sparse with privacy={mode}: the clipping and noise of this mode work on "
                              "the whole dense update of every client; use exchange=dense, or a mode that takes "
                              "sparse rows (secagg: two secure sums; client_clip_dp, secagg_dp: DP rows, "
                              "fedmtl/dp_rows.py)")
        if mode in CLIENT_DP_MODES:  # DP rows: dp_rows.Budget
            if mode == "client_clip_dp" and get(cfg, "privacy.clipping") != "fixed":
                raise ConfigError("exchange=sparse with privacy.clipping=adaptive: DP rows split a fixed clipping "
                                  "norm between the update and the row indicator; use privacy.clipping=fixed")
            number(cfg, "privacy.max_rows", lo=1, integer=True)
            number(cfg, "privacy.count_share", lo=0, hi=1, lo_open=True, hi_open=True)
            number(cfg, "privacy.row_scale", lo=0, lo_open=True)
            if get(cfg, "privacy.min_row_count") is not None:
                number(cfg, "privacy.min_row_count", lo=0, lo_open=True)
    choice(cfg, "dataset.name", DATASETS)
    offered = configure_tasks(cfg)  # the registry: the defaults, or the labels of an interaction log
    source = f"dataset={get(cfg, 'dataset.name')}" if get(cfg, "dataset.name") in LOG_DATASETS else None
    asked = get(cfg, "tasks")  # null: every task the data set offers
    cfg["tasks"] = check_tasks(offered if asked is None else asked, offered, source)
    if (cfg["exchange"]["name"] == "sparse" and get(cfg, "exchange.pad_rows") == 0 and _has_ranking(cfg["tasks"])
            and get(cfg, "train.click_loss") == "sampled"):
        raise ConfigError("exchange=sparse with exchange.pad_rows=0 and train.click_loss=sampled: the click "
                          "negatives are drawn from the pad rows; set exchange.pad_rows above 0")
    choice(cfg, "aggregate", AGGREGATE_MODES)
    choice(cfg, "device", DEVICES)
    choice(cfg, "model.name", ARCHITECTURES)
    if not isinstance(cfg["model"]["history"], bool):
        raise ConfigError(f"model.history={cfg['model']['history']}: expected true or false")
    choice(cfg, "weighting.name", WEIGHTINGS)
    _drop_other_options(cfg, "weighting")
    try:  # its options, now rather than in every client
        build_weighting(cfg["weighting"], cfg["tasks"])
    except (TypeError, ValueError, KeyError, AttributeError) as e:
        raise ConfigError(f"weighting={cfg['weighting']['name']}: bad options {cfg['weighting']} ({e})") from None
    choice(cfg, "strategy.name", STRATEGIES)
    _strategy_options(cfg)
    check_server_lr(cfg)
    choice(cfg, "privacy.name", PRIVACY)
    check_privacy(cfg)
    from .privacy_floor import check_config as check_floor
    check_floor(cfg)  # client_floor: what the clients themselves accept
    from .itemitem import check_config as check_click_mix
    check_click_mix(cfg)
    choice(cfg, "backend.name", BACKENDS)
    bcfg = cfg["backend"]
    if bcfg["name"] in ("inprocess", "cohort") and "workers" in bcfg:
        number(cfg, "backend.workers", lo=1, integer=True)  # worker processes
    if bcfg["name"] == "cohort":  # here, not where each worker process builds its grid
        if "threads" in bcfg:
            number(cfg, "backend.threads", lo=0, integer=True)  # 0: every core
        if bcfg.get("chunk_mb") is not None:
            number(cfg, "backend.chunk_mb", lo=0, lo_open=True)
    choice(cfg, "train.click_loss", CLICK_LOSSES)
    choice(cfg, "train.optimizer", ("adam", "sgd"))
    if cfg["train"]["shared_lr"] is not None:
        number(cfg, "train.shared_lr", lo=0, lo_open=True)
    choice(cfg, "on_client_failure", ("continue", "stop"))
    number(cfg, "round_timeout", lo=0, lo_open=True)
    for key in ("num_clients", "num_rounds", "local_epochs", "eval_every", "model.dim", "train.batch_size"):
        number(cfg, key, lo=1, integer=True)
    for key in ("seed", "min_train_clients", "min_evaluate_clients", "train.num_negatives", "fedrep.head_epochs"):
        number(cfg, key, lo=0, integer=True)
    number(cfg, "server_decay", lo=0, hi=1, hi_open=True)
    number(cfg, "average_last", lo=0, integer=True)  # above num_rounds: every round
    for key in ("fraction_train", "fraction_evaluate"):
        number(cfg, key, lo=0, hi=1, lo_open=True)
    number(cfg, "train.lr", lo=0, lo_open=True)
    number(cfg, "train.l2", lo=0)
    number(cfg, "train.weight_decay", lo=0)
    number(cfg, "train.personal_decay", lo=0)
    if cfg["dataset"].get("layout") == "log":
        if not cfg["dataset"].get("file"):
            raise ConfigError("dataset.file: dataset=log needs the log's file (a path, a glob or a list)")
    elif cfg["dataset"]["name"] not in GENERATED and not cfg["dataset"].get("path"):
        raise ConfigError(f"dataset.path: dataset={cfg['dataset']['name']} needs the folder of its files, "
                          "e.g. dataset.path=data/ml-100k")
    from .transfer.checks import validate_config as validate_transfer
    validate_transfer(cfg)  # init.* and transfer.* (the split's check reads them)
    from .data.split import check_config as check_split
    check_split(cfg)
    if cfg["split"]["name"] == "leave_one_out":
        from .tasks import selection_key
        if selection_key(cfg["tasks"]) is None:  # its round selection reads the first ranking task's valid HR@K
            raise ConfigError(f"split=leave_one_out with tasks={cfg['tasks']}: its figures are a ranking task's "
                              "HR@10 and NDCG@10 (the reported round is chosen on its validation HR@10); add one "
                              "(click)")
    _check_faults_and_resume(cfg)
    _check_robust(cfg)
    if cfg.get("baseline_epochs") is not None:
        number(cfg, "baseline_epochs", lo=1, integer=True)
    if cfg["split"].get("seed") is None:
        cfg["split"]["seed"] = cfg["seed"]
    if cfg["device"] == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("device=cuda: no CUDA device is visible to torch (use device=auto or cpu)")
    return cfg


def _check_robust(cfg: dict) -> None:
    """The robust block: what the server accepts from a client (federation/replies.py)."""
    robust = block(cfg, "robust")
    number(cfg, "robust.max_abs_update", lo=0, lo_open=True)
    for key in ("max_weight", "max_update_norm"):
        if robust[key] is not None:
            number(cfg, f"robust.{key}", lo=0, lo_open=True)
    if robust["max_weight"] is not None and robust["max_weight"] < 1:
        raise ConfigError(f"robust.max_weight={robust['max_weight']}: must be >= 1 (a client reports at least 1)")
    choice(cfg, "robust.on_large_update", ("reject", "clip"))


def _check_faults(cfg: dict) -> None:
    """The `faults` keys (federation/faults.py injects them)."""
    if cfg.get("faults") is None:  # null: no faults
        cfg["faults"] = dict(BEFORE_KEY["faults"])
    f = cfg["faults"]
    if not isinstance(f, dict):
        raise ConfigError(f"faults={f!r}: expected a group with drop_rate, straggler_rate, straggler_delay, seed")
    for key in ("drop_rate", "straggler_rate"):
        v = f.get(key, 0.0)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1:
            raise ConfigError(f"faults.{key}={v!r}: expected a number in [0, 1]")
    if f.get("drop_rate", 0.0) + f.get("straggler_rate", 0.0) > 1:
        raise ConfigError(f"faults.drop_rate + faults.straggler_rate = "
                          f"{f.get('drop_rate', 0.0) + f.get('straggler_rate', 0.0)}: must be <= 1")
    d = f.get("straggler_delay")
    if d is not None and (isinstance(d, bool) or not isinstance(d, (int, float)) or d < 0):
        raise ConfigError(f"faults.straggler_delay={d!r}: expected a number of seconds >= 0 (or null)")
    s = f.get("seed")
    if s is not None and (isinstance(s, bool) or not isinstance(s, int) or s < 0):
        raise ConfigError(f"faults.seed={s!r}: expected an integer >= 0 (or null = seed)")
    if f.get("straggler_rate", 0.0) > 0:
        timeout = cfg.get("round_timeout")
        if timeout is None:
            raise ConfigError("faults.straggler_rate needs a round_timeout for stragglers to miss (round_timeout=null)")
        if isinstance(timeout, (int, float)) and d is not None and d <= timeout:
            raise ConfigError(f"faults.straggler_delay={d}: a straggler must reply after round_timeout={timeout}")


def _check_faults_and_resume(cfg: dict) -> None:
    if cfg.get("round_timeout") is not None:
        number(cfg, "round_timeout", lo=0, lo_open=True)
    _check_faults(cfg)
    if "checkpoint_every" in cfg:
        number(cfg, "checkpoint_every", lo=0, integer=True)
    r = cfg.get("resume", False)
    if not isinstance(r, (bool, str)):
        raise ConfigError(f"resume={r!r}: expected true, false or the path of a run folder")
    if r and cfg["mode"] != "federated":
        raise ConfigError(f"resume with mode={cfg['mode']}: only federated runs keep round checkpoints")
    if r and cfg["backend"]["name"] not in ("inprocess", "cohort"):
        raise ConfigError(f"resume with backend={cfg['backend']['name']}: Flower's Ray engine keeps client states "
                          "inside its actors; resume needs backend=cohort or backend=inprocess")


def check_privacy(cfg: dict) -> None:
    """The privacy= options (federation/privacy.py, docs/privacy.md)."""
    from .knob_names import DP_MODES, SECAGG_MODES

    p, mode = cfg["privacy"], cfg["privacy"]["name"]
    correction = p.get("adam_noise_correction")
    if correction is not None:  # strategies.NoiseCorrectedAdam: the noise std DP rows release
        number(cfg, "privacy.adam_noise_correction", lo=0)
        from .dp_rows import enabled as dp_rows_enabled
        if get(cfg, "strategy.name") != "fedadam" or not dp_rows_enabled(cfg):
            # as a preset's strategy keys under another strategy: switching it over the DP preset is one override
            import logging
            logging.getLogger("fedmtl").warning(
                "privacy.adam_noise_correction=%s corrects FedAdam's second moment for the noise of DP rows; with "
                "privacy=%s, strategy=%s and exchange=%s it has nothing to correct: dropped", correction, mode,
                get(cfg, "strategy.name"), get(cfg, "exchange.name"))
            cfg["privacy"]["adam_noise_correction"] = None
    if mode == "none":
        return
    strategy = cfg["strategy"]["name"]
    from .knob_names import NOT_A_MEAN
    if mode != "local_dp" and strategy in NOT_A_MEAN:
        raise ConfigError(f"privacy={mode} with strategy={strategy}: the noise and SecAgg+ work on a plain mean of "
                          "the updates, not a median or trimmed mean; use fedavg, fedprox, fedavgm or the FedOpt "
                          "family (their server step runs on the released mean)")
    if mode in ("central_dp", "client_clip_dp"):
        choice(cfg, "privacy.clipping", ("fixed", "adaptive"))
    if mode in DP_MODES:
        number(cfg, "privacy.clipping_norm", lo=0, lo_open=True)
        number(cfg, "privacy.delta", lo=0, hi=1, lo_open=True)
        if p.get("target_epsilon") is not None:
            number(cfg, "privacy.target_epsilon", lo=0, lo_open=True)
    if mode == "local_dp":
        number(cfg, "privacy.epsilon", lo=0, lo_open=True)
        if p.get("sensitivity") is not None:
            number(cfg, "privacy.sensitivity", lo=0, lo_open=True)
    elif mode in DP_MODES:
        if p.get("noise_multiplier") is None:
            if p.get("target_epsilon") is None:
                raise ConfigError(f"privacy.noise_multiplier=null: privacy={mode} then needs privacy.target_epsilon "
                                  "to pick it from")
        else:
            number(cfg, "privacy.noise_multiplier", lo=0, lo_open=True)
    if mode in SECAGG_MODES:
        n = cfg["num_clients"]
        m = min(n, max(int(n * cfg["fraction_train"]), min(cfg["min_train_clients"], n)))
        number(cfg, "privacy.clipping_range", lo=0, lo_open=True)
        number(cfg, "privacy.quantization_range", lo=1, integer=True)
        if p.get("max_weight") is not None:
            number(cfg, "privacy.max_weight", lo=0, lo_open=True)
        if m < 2:
            raise ConfigError(f"privacy={mode}: SecAgg+ needs at least 2 clients per round, this run samples {m}")
        if m * p["quantization_range"] > 2**32:
            raise ConfigError(f"privacy.quantization_range={p['quantization_range']}: {m} clients per round would "
                              f"overflow SecAgg+'s 2**32 modulus; use at most {2**32 // m}")
        shares, threshold = p["num_shares"], p["reconstruction_threshold"]
        for key, value in (("num_shares", shares), ("reconstruction_threshold", threshold)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0 or (
                    isinstance(value, float) and value > 1):
                raise ConfigError(f"privacy.{key}={value!r}: expected an integer count or a fraction in (0, 1]")
        if isinstance(shares, int) and not (shares == 1 or 3 <= shares):
            raise ConfigError(f"privacy.num_shares={shares}: an integer must be at least 3 (or 1.0 for all)")
        if isinstance(shares, int) and shares > m:
            raise ConfigError(f"privacy.num_shares={shares}: more than the {m} clients sampled per round")
        if isinstance(shares, int) and isinstance(threshold, int) and threshold != 1 and not 2 <= threshold < shares:
            raise ConfigError(f"privacy.reconstruction_threshold={threshold}: must be >= 2 and below "
                              f"num_shares={shares}")


def resolve_device(cfg: dict) -> str:
    import torch
    if cfg["device"] == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return cfg["device"]
