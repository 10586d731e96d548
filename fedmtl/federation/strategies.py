"""Flower's own strategies, configured from `strategy=` (never re-implemented here).

| strategy=     | Flower class  | server step on the shared arrays                        |
| fedavg        | FedAvg        | example-weighted mean of the clients' arrays             |
| fedprox       | FedProx       | as FedAvg; clients add mu/2 ||w - w_global||^2 (train.py) |
| fedavgm       | FedAvgM       | SGD with momentum on the pseudo-gradient (old - mean)     |
| fedadagrad    | FedAdagrad    | Adagrad on the pseudo-gradient (Reddi et al. 2021)       |
| fedadam       | FedAdam       | Adam on the pseudo-gradient                               |
| fedyogi       | FedYogi       | Yogi on the pseudo-gradient                               |
| fedmedian     | FedMedian     | coordinate-wise median (robust to outlier clients)        |
| fedtrimmedavg | FedTrimmedAvg | coordinate-wise mean without the `beta` tails             |

Each conf/strategy/<name>.yaml holds the class's own hyper-parameters; the
sampling and minimum-client settings come from the top-level config. With
`exchange=sparse` the clients' row-sparse uploads are first averaged row by row
(`sparse.SparseFedAvg`), then the strategy's own server step runs on that
average; FedMedian and FedTrimmedAvg need every client's whole array, so they
take `exchange=dense` only.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, MetricRecord, RecordDict
from flwr.serverapp import strategy as fs

from ..config_types import RunConfig
from ..errors import ConfigError
from ..knob_names import NOT_A_MEAN, SERVER_RATE
from ..metrics import combine
from .sparse import SparseFedAvg

CLASSES = {
    "fedavg": fs.FedAvg,
    "fedprox": fs.FedProx,
    "fedavgm": fs.FedAvgM,
    "fedadagrad": fs.FedAdagrad,
    "fedadam": fs.FedAdam,
    "fedyogi": fs.FedYogi,
    "fedmedian": fs.FedMedian,
    "fedtrimmedavg": fs.FedTrimmedAvg,
}


def evaluate_aggregation(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Combine the clients' metric parts into the PROTOCOL.md figures (pooled AUC,
    example-weighted errors, per-user ranking means, spread over clients)."""
    parts = [dict(rec["metrics"]) for rec in records]
    out = combine(parts)
    out["clients"] = len(parts)
    return MetricRecord(out)


def train_aggregation(records: list[RecordDict], weighted_by_key: str) -> MetricRecord:
    """Flower's aggregate_metricrecords (the weighted mean of the training replies' metrics,
    the same factors, products and order of sums), summed in a plain dict and made a
    MetricRecord once: Flower's re-validates the record on each of clients x metrics updates,
    a tenth of a second a round at 943 clients."""
    # each record's first MetricRecord, as r.metric_records (which builds and type-checks a dict a call) gives it
    metrics = [next(v for v in r.values() if isinstance(v, MetricRecord)) for r in records]
    weights = [float(m[weighted_by_key]) for m in metrics]
    total = sum(weights)
    out: dict = {}
    for m, w in zip(metrics, (w / total for w in weights)):
        for key, value in m.items():
            if key == weighted_by_key:
                continue
            if isinstance(value, list):
                out[key] = ([v * w for v in value] if key not in out
                            else [c + v * w for c, v in zip(out[key], value, strict=True)])
            else:
                out[key] = value * w if key not in out else out[key] + value * w
    return MetricRecord(out)


def decay_arrays(arrays: ArrayRecord, decay: float, dtypes: dict | None = None) -> ArrayRecord:
    """`server_decay=d`: every shared array times 1 - d (decoupled weight decay, as in
    AdamW, Loshchilov and Hutter 2019, applied once a round by the server). It reaches
    every row of the shared tables, also the ones no client sent under exchange=sparse.
    `dtypes` (name -> dtype) casts each array first, in the same pass (KeepDtypes)."""
    out = {}
    for k, a in arrays.items():
        v = a.numpy()  # deserialises: once per array
        v = np.asarray(v, dtype=(dtypes or {}).get(k, v.dtype))
        # asarray: a 0-d array times a float is a NumPy scalar, which Array refuses (the
        # heads' offsets under aggregate=all)
        out[k] = Array(np.asarray(v * (1.0 - decay), dtype=v.dtype) if decay else v)
    return ArrayRecord(out)


class KeepDtypes:
    """Cast the aggregate back to the dtypes the server sent. Flower's FedOpt family
    multiplies the float32 arrays by NumPy float64 scalars, which would turn the
    shared model into float64 and double every later download. Also applies
    `server_decay` to the aggregate (`self.server_decay`, set by build_strategy)."""

    server_decay = 0.0

    def configure_train(self, server_round, arrays, config, grid):
        self._sent_dtypes = {k: a.dtype for k, a in arrays.items()}
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        arrays, metrics = super().aggregate_train(server_round, replies)
        if arrays is None:
            return arrays, metrics
        dtypes = getattr(self, "_sent_dtypes", {})
        if self.server_decay or any(a.dtype != dtypes.get(k, a.dtype) for k, a in arrays.items()):
            arrays = decay_arrays(arrays, self.server_decay, dtypes)  # cast and decay in one pass
        if self.server_decay and isinstance(self, fs.FedAvgM):
            self.current_arrays = arrays  # FedAvgM steps from its last output: the decayed model
        return arrays, metrics




@lru_cache(maxsize=None)
def strategy_class(name: str, exchange: str = "dense") -> type:
    """Flower's class for `strategy=name`, keeping dtypes; for exchange=sparse, with
    SparseFedAvg's row-wise mean under the class's own step (FedOpt and FedAvgM
    call FedAvg's aggregate_train first, so the MRO puts SparseFedAvg there)."""
    if name not in CLASSES:
        raise ConfigError(f"strategy={name}: expected one of {sorted(CLASSES)}")
    cls = CLASSES[name]
    if exchange == "dense":
        bases = (KeepDtypes, cls)
    elif name in NOT_A_MEAN:
        raise ConfigError(f"strategy={name} with exchange={exchange}: {cls.__name__} aggregates whole arrays; "
                          "use exchange=dense")
    else:
        bases = (KeepDtypes, SparseFedAvg) if cls is fs.FedAvg else (KeepDtypes, cls, SparseFedAvg)
    return type(cls.__name__, bases, {"__doc__": cls.__doc__})


def server_rate(cfg: RunConfig, rnd: int) -> float | None:
    """The server rate of round `rnd` under `server_lr.schedule` (None: the strategy has none).

    cosine: from the strategy's configured rate at round 1 down to `server_lr.final` times it
    at the last round (half a cosine period). A function of the round only, so a resumed
    run continues the same schedule."""
    key = SERVER_RATE.get(cfg["strategy"]["name"])
    if key is None:
        return None
    base = float(cfg["strategy"].get(key, 1.0 if key == "server_learning_rate" else 0.1))
    sched = cfg["server_lr"]
    if sched["schedule"] == "constant" or cfg["num_rounds"] <= 1:
        return base
    final = float(sched["final"])
    progress = (min(max(rnd, 1), cfg["num_rounds"]) - 1) / (cfg["num_rounds"] - 1)
    return base * (final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def set_server_rate(strategy, cfg: RunConfig, rnd: int) -> float | None:
    """Give the strategy (or the optimiser or strategy a privacy wrapper holds) its rate for round `rnd`."""
    rate = server_rate(cfg, rnd)
    if rate is not None:
        inner = getattr(strategy, "optimizer", None) or getattr(strategy, "strategy", strategy)
        setattr(inner, SERVER_RATE[cfg["strategy"]["name"]], rate)
    return rate


class GivenMean(fs.FedAvg):
    """A plain mean a privacy mode already released (DP-noised by Flower's wrapper, or
    SecAgg+'s unmasked sum), put where FedAvg's own mean would be. A server optimiser
    built over it (FedAdam's `super().aggregate_train`) then steps from that release:
    post-processing, which changes neither what the server sees nor epsilon (DP-FedAdam,
    Reddi et al. 2021; Andrew et al. 2021)."""

    given: tuple | None = None  # (ArrayRecord, MetricRecord): set before each aggregate_train

    def aggregate_train(self, server_round, replies):
        given, self.given = self.given, None
        return given if given is not None else (None, None)


class NoiseCorrectedAdam:
    """FedAdam over a DP release whose noise std is known (`privacy.adam_noise_correction=g`,
    DP rows): the release's noise variance is taken out of the second moment (DP-AdamBC, Tang
    et al., AAAI 2024). Without it, Adam's v is mostly the noise's, so every coordinate steps
    by about eta whatever its signal (DP-Adam is then DP-SGD with a rate set by the noise).

    v_t = b2 v + (1 - b2) delta^2 as FedAdam; after t rounds its mean holds (1 - b2^t) s^2 of
    noise, s the std the release left on the value (`noise_std`, set by the release before
    each step: z * C / m, on a row table's row z * C / (k * its divisor)). The step divides by
    sqrt(max(v_t - (1 - b2^t) s^2, g (1 - b2^t) s^2)) + tau instead of sqrt(v_t) + tau, with
    FedAdam's own bias-corrected rate; g keeps a value whose v is noise alone from a step
    larger than 1 / sqrt(g) times FedAdam's. A function of the releases only:
    post-processing, epsilon unchanged. Without a noise_std (None) the step is FedAdam's."""

    noise_floor = 0.0  # g
    noise_std: dict | None = None

    def aggregate_train(self, server_round, replies):
        std, self.noise_std = self.noise_std, None
        if std is None:
            return super().aggregate_train(server_round, replies)
        aggregated, metrics = super(fs.FedAdam, self).aggregate_train(server_round, replies)  # the given mean
        if aggregated is None:
            return aggregated, metrics
        delta_t, m_t, arrays = self._compute_deltat_and_mt(aggregated)
        if not self.v_t:
            self.v_t = {k: np.zeros_like(v) for k, v in arrays.items()}
        self.v_t = {k: self.beta_2 * v + (1 - self.beta_2) * (delta_t[k] ** 2) for k, v in self.v_t.items()}
        eta_norm = (self.eta * np.sqrt(1 - np.power(self.beta_2, server_round + 1.0))
                    / (1 - np.power(self.beta_1, server_round + 1.0)))  # FedAdam's, as Flower computes it
        held = 1.0 - self.beta_2 ** server_round  # the share of s^2 in v_t's mean after server_round steps
        new = {}
        for k, x in self.current_arrays.items():
            var = held * np.asarray(std.get(k, 0.0), np.float64) ** 2
            v = np.maximum(self.v_t[k] - var, self.noise_floor * var)
            new[k] = x + eta_norm * m_t[k] / (np.sqrt(v) + self.tau)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in new.items()}), metrics


SERVER_OPTIMIZERS = tuple(SERVER_RATE)  # the strategies whose server step is more than a mean


def _common(cfg: RunConfig) -> dict:
    return dict(
        fraction_train=cfg["fraction_train"],
        fraction_evaluate=cfg["fraction_evaluate"],
        min_train_nodes=min(cfg["min_train_clients"], cfg["num_clients"]),
        min_evaluate_nodes=min(cfg["min_evaluate_clients"], cfg["num_clients"]),
        min_available_nodes=min(cfg["min_train_clients"], cfg["num_clients"]),
        evaluate_metrics_aggr_fn=evaluate_aggregation,
        train_metrics_aggr_fn=train_aggregation,
    )


def averager(cfg: RunConfig):
    """A plain FedAvg with the run's sampling: what a privacy mode clips, noises or sums
    under a server optimiser (`server_optimizer`)."""
    strategy = strategy_class("fedavg")(**_common(cfg))
    strategy.server_decay = 0.0  # the optimiser applies it, after its step
    return strategy


def server_optimizer(cfg: RunConfig):
    """The run's server optimiser (FedOpt family, FedAvgM) stepping from a given mean
    (`GivenMean`), with its dtypes and server_decay kept; None for strategies whose
    server step is the mean itself."""
    if cfg["strategy"]["name"] not in SERVER_OPTIMIZERS:
        return None
    return build_strategy(cfg, given_mean=True)


def prime(optimizer, arrays: ArrayRecord) -> None:
    """What a server optimiser's configure_train records of the arrays it sends (without
    sampling): FedOpt's current arrays, FedAvgM's first model, KeepDtypes' dtypes."""
    optimizer._sent_dtypes = {k: a.dtype for k, a in arrays.items()}
    if isinstance(optimizer, fs.fedopt.FedOpt):
        optimizer.current_arrays = {k: a.numpy() for k, a in arrays.items()}
    elif isinstance(optimizer, fs.FedAvgM) and optimizer.current_arrays is None:
        optimizer.current_arrays = arrays


def step_from(optimizer, server_round: int, arrays: ArrayRecord, mean: ArrayRecord, metrics=None):
    """The optimiser's new model from the released `mean` of a round that sent `arrays`."""
    prime(optimizer, arrays)
    optimizer.given = (mean, metrics if metrics is not None else MetricRecord({}))
    return optimizer.aggregate_train(server_round, [])


def build_strategy(cfg: RunConfig, given_mean: bool = False):
    scfg = dict(cfg["strategy"])
    name = scfg.pop("name")
    cls = strategy_class(name, cfg["exchange"]["name"])
    if given_mean:  # the mean is given (row-wise already under exchange=sparse): no SparseFedAvg in between
        cls = strategy_class(name, "dense")
        if cfg["privacy"].get("adam_noise_correction") is not None:  # validated: fedadam under DP rows
            cls = type(cls.__name__, (KeepDtypes, NoiseCorrectedAdam, fs.FedAdam), {"__doc__": cls.__doc__})
        cls = type(cls.__name__, (cls, GivenMean), {"__doc__": cls.__doc__})
    common = _common(cfg)
    if issubclass(cls, fs.fedopt.FedOpt):
        common["eta_l"] = cfg["train"]["lr"]  # Flower only records it: the clients' rate is train.lr
    try:
        strategy = cls(**common, **scfg)
    except TypeError as e:
        raise ConfigError(f"strategy={name}: {e}") from None
    strategy.server_decay = float(cfg["server_decay"])
    if isinstance(strategy, NoiseCorrectedAdam):
        strategy.noise_floor = float(cfg["privacy"]["adam_noise_correction"])
    return strategy
