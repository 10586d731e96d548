"""`privacy=`: what the server may learn about one client, wired from Flower's own parts.
This module holds the server's side (`ServerPrivacy`, Flower's DP wrappers with secret
noise); the client's side, the train handler's mods, is client_privacy.py.

| privacy=       | client side (train handler only)              | server side                                      |
| none           | -                                             | the strategy as configured                       |
| central_dp     | -                                             | DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping |
| client_clip_dp | fixed_clipping_mod* / adaptiveclipping_mod    | DifferentialPrivacyClientSide{Fixed,Adaptive}Clipping |
| local_dp       | SecureLocalDpMod (clip + noise per client)    | the strategy as configured                       |
| secagg         | secaggplus_mod (legacy records, legacy.py)    | SecAggPlusWorkflow: only the masked sum          |
| secagg_dp      | secaggplus_mod + fixedclipping_mod + noise    | SecAggPlusWorkflow (distributed DP)              |

* Flower's fixedclipping_mod without .npy round trips in one process (client_privacy.py).

exchange=sparse under client_clip_dp / secagg_dp sends DP rows (fedmtl/dp_rows.py: one
clipped vector of update and row indicator; `RowRelease` decodes the noised mean), and
click_mix's item Gram is released clipped and noised (`gram_released`: one more event).

The DP modes aggregate with uniform client weights (each client reports
`num-examples` = 1 with its update), because the noise `z * C / m` that Flower adds to the mean of m
clipped updates protects one client only when every client weighs the same.

Secret randomness: every noise draw of these modes (and adaptive clipping's noisy
count) comes from the OS CSPRNG (fedmtl/secure_random.py), never from `seed`; so does
the choice of the clients a DP round samples (`SecretOrder`). Nothing in
the run folder regenerates them.

Accounting (the ledger, the multipliers, whether a sample must be secret): accounting.py.
"""

from __future__ import annotations

import logging

import numpy as np
from flwr.app import Array, ArrayRecord
from flwr.serverapp import strategy as fs
from flwr.supercore.differential_privacy import compute_stdv

from .. import dp_rows, secure_random
from ..config_types import RunConfig
from ..errors import ConfigError
from ..knob_names import DP_MODES, SECAGG_MODES
from .accounting import Ledger, gram_noise_multiplier, noise_multiplier, sample_size, surviving_multiplier

log = logging.getLogger("fedmtl")


class SecretOrder:
    """The grid with its node ids in an order drawn from the OS CSPRNG. Flower's strategies
    take `random.sample` positions of that list: whatever the positions (they follow the
    seeded `random`), the nodes at them are a uniform sample that no seed can replay."""

    def __init__(self, grid):
        self._grid = grid

    def get_node_ids(self):
        return secure_random.shuffled(self._grid.get_node_ids())

    def __getattr__(self, name):
        return getattr(self._grid, name)


class ServerPrivacy:
    """The server's side of `privacy=`: the wrapped strategy, the ledger, and for the
    secagg modes the SecAgg+ training round that replaces the plain one."""

    def __init__(self, cfg: RunConfig, strategy):
        self.cfg, self.p = cfg, dict(cfg["privacy"])
        self.mode = self.p["name"]
        self.strategy = strategy
        self.ledger: Ledger | None = None
        self.noise_multiplier: float | None = None
        self.secure_round = None
        self.stopped: str | None = None
        self.gram_z: float | None = None  # click_mix's DP Gram release, once made
        m, n = sample_size(cfg), cfg["num_clients"]
        if self.mode in DP_MODES:  # the noise itself comes from the OS CSPRNG (secure_random), never `seed`
            self.ledger = Ledger(n, m, float(self.p["delta"]), local=self.mode == "local_dp")
            self.noise_multiplier = noise_multiplier(cfg)
            if self.mode != "local_dp" and self.p.get("noise_multiplier") is None:
                log.info("privacy: noise multiplier %.4f gives epsilon <= %s after %d rounds", self.noise_multiplier,
                         self.p["target_epsilon"], cfg["num_rounds"])
        # A server optimiser (FedOpt family, FedAvgM) steps from the mean a mode releases:
        # the DP wrapper or SecAgg+ computes a plain mean, the optimiser is post-processing.
        from .strategies import averager, server_optimizer
        self.optimizer = server_optimizer(cfg) if self.mode in ("central_dp", "client_clip_dp", *SECAGG_MODES) \
            else None
        self.rows = RowRelease(cfg, self.noise_multiplier, self.optimizer) if dp_rows.enabled(cfg) else None
        if self.optimizer is not None or self.rows is not None:
            self.strategy = strategy = averager(cfg)
        if self.mode in ("central_dp", "client_clip_dp"):
            self.strategy = wrap_strategy(strategy, self.p, self.noise_multiplier, m, self.mode)
            if self.optimizer is not None or self.rows is not None:
                self.strategy = StepAfterRelease(self.strategy, self.optimizer, self.rows, cfg.get("server_decay"))
        if self.mode in SECAGG_MODES:
            from .secagg_round import SecAggRound
            self.secure_round = SecAggRound(cfg, self.rows)

    def server_step(self, rnd: int, sent, mean):
        """The new model from SecAgg+'s released mean of a round that sent `sent`: the server
        optimiser's step from it, or the mean itself; then server_decay."""
        if self.optimizer is not None:
            from .strategies import step_from
            return step_from(self.optimizer, rnd, sent, mean)[0]  # KeepDtypes decays it
        if self.cfg.get("server_decay"):
            from .strategies import decay_arrays
            return decay_arrays(mean, self.cfg["server_decay"])
        return mean

    def gram_released(self, answered: int, asked: int) -> dict:
        """click_mix's DP Gram was released (summed from `answered` of `asked` clients): compose it
        into the ledger before round 1's release. Under secagg_dp each client added its share
        of the noise, so fewer answers leave less of it (as a training round)."""
        z = gram_noise_multiplier(self.cfg)
        if self.ledger is None or z is None:
            return {}
        if self.mode == "secagg_dp":
            z = surviving_multiplier(z, answered, asked)
        self.ledger.spend(z, everyone=True)
        self.gram_z = z
        return {"gram_noise_multiplier": z, "epsilon_after_gram": self.ledger.epsilon()}

    def stop_reason(self, rnd: int) -> str | None:
        """Why round `rnd` must not run (its release would exceed privacy.target_epsilon), or None."""
        target = self.p.get("target_epsilon")
        if self.ledger is None or target is None or self.stopped:
            return self.stopped
        if self.ledger.would_exceed(self.noise_multiplier, float(target)):
            self.stopped = (f"privacy budget: round {rnd} would take epsilon past target_epsilon={target} "
                            f"(spent {self.ledger.epsilon():.4f} at delta={self.ledger.delta:g})")
        return self.stopped

    def after_round(self, rnd: int, aggregated: bool, answered: int) -> dict:
        """Compose the round's release (if an aggregate was released) and report the spend."""
        out: dict = {"mode": self.mode}
        if self.ledger is None:
            return {"privacy": out}
        z = self.noise_multiplier
        if self.mode == "secagg_dp":  # with fewer survivors the sum holds less noise
            z = surviving_multiplier(z, answered, sample_size(self.cfg))
        # Local DP: a client's noised update is released when sent; otherwise when an aggregate is.
        released = answered > 0 if self.ledger.local else aggregated and answered > 0
        if released:
            self.ledger.spend(z)
        out.update({"epsilon": self.ledger.epsilon(), "delta": self.ledger.delta, "noise_multiplier": z,
                    "releases": self.ledger.releases})
        if self.ledger.amplified:
            out["epsilon_known_sample"] = self.ledger.epsilon_known_sample()
        if self.rows is not None and self.rows.last:
            out["rows"] = self.rows.last
        clip = getattr(self.strategy, "clipping_norm", None)
        if clip is not None:
            out["clipping_norm"] = float(clip)
        return {"privacy": out}

    def summary(self) -> dict:
        out = {"mode": self.mode}
        if self.ledger is not None:
            out.update({"epsilon": self.ledger.epsilon(), "delta": self.ledger.delta,
                        "noise_multiplier": self.noise_multiplier, "releases": self.ledger.releases,
                        "accounting": self.ledger.method,
                        "relation": self.ledger.relation})
            if self.ledger.amplified:
                out["epsilon_known_sample"] = self.ledger.epsilon_known_sample()
            if self.gram_z is not None:
                out["gram_noise_multiplier"] = self.gram_z
        if self.stopped:
            out["stopped"] = self.stopped
        return out

    def state_dict(self) -> dict:
        """What a resumed run needs: the accountant's ledger and an adaptive clipping bound."""
        return {"ledger": self.ledger.accountant.state_dict() if self.ledger else None,
                "spent": list(self.ledger.spent) if self.ledger else [], "stopped": self.stopped,
                "clipping_norm": getattr(self.strategy, "clipping_norm", None),
                "row_counts": self.rows.counts.state_dict() if self.rows is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.ledger is not None and state.get("ledger"):
            self.ledger.load_state_dict(state["ledger"], state.get("spent", []))
        if state.get("clipping_norm") is not None and hasattr(self.strategy, "clipping_norm"):
            self.strategy.clipping_norm = float(state["clipping_norm"])
        self.stopped = state.get("stopped")
        if self.rows is not None:
            if state.get("row_counts"):
                self.rows.counts.load_state_dict(state["row_counts"])
            if isinstance(self.strategy, StepAfterRelease):  # the strategy's restore set a copy: one place
                self.strategy.rows = self.rows


class SecureNoise:
    """Flower's DP wrappers with their two noise draws taken from the OS CSPRNG
    (fedmtl/secure_random.py): the Gaussian noise on the aggregate and adaptive clipping's
    noisy clipped count. Flower draws both from NumPy's global RNG, which anyone who knows
    (or guesses) its seed can replay and subtract."""

    def aggregate_train(self, server_round, replies):
        """Flower's wrapper skips the whole round when any client failed (one crashing client
        would stall training for good): the failed ones are left out instead, and the noise is
        scaled to the clients actually averaged (below), so each release keeps multiplier z."""
        ok = [r for r in replies if not r.has_error()]
        sampled = self.num_sampled_clients
        if 0 < len(ok) < sampled:
            log.info("round %d: %d of %d sampled clients answered; the DP noise is scaled to the %d "
                     "averaged (multiplier %.4g kept)", server_round, len(ok), sampled, len(ok),
                     self.noise_multiplier)
        # while the round aggregates, the count is the clients averaged: the noise's (below), and
        # Flower's wrapper no longer warns (to two handlers) that the missing answers "could
        # impact the privacy guarantees", not so here
        self.num_sampled_clients = len(ok) or sampled
        try:
            return super().aggregate_train(server_round, ok)
        finally:
            self.num_sampled_clients = sampled

    def _add_noise_to_aggregated_arrays(self, aggregated: ArrayRecord) -> ArrayRecord:
        # std z*C/m' on the mean of the m' updates averaged, num_sampled_clients during
        # aggregate_train (Flower: m, the sampled count, which under dropouts is less noise than
        # the mean's sensitivity C/m' needs for multiplier z)
        nds = aggregated.to_numpy_ndarrays()
        std = compute_stdv(self.noise_multiplier, self.clipping_norm, self.num_sampled_clients)
        secure_random.add_gaussian_inplace(nds, std)
        return ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(aggregated.keys(), nds)})

    def _noisy_fraction(self, count: int, total: int) -> float:
        return secure_random.normal(count, self.clipped_count_stddev) / float(total)


class RowRelease:
    """exchange=sparse under client_clip_dp / secagg_dp (dp_rows.py): the arrays a training
    round sends (the shared ones and the row indicator's zeros) and the new shared arrays
    from a released mean; its running row counts are kept in the checkpoint."""

    def __init__(self, cfg: RunConfig, noise_multiplier: float, optimizer=None):
        self.cfg, self.noise_multiplier = cfg, noise_multiplier
        self.budget = dp_rows.Budget.of(cfg)
        self.counts = dp_rows.RowCounts()
        self.last: dict = {}
        # a noise-corrected FedAdam (strategies.NoiseCorrectedAdam) is handed each release's noise std
        self.corrected = optimizer if hasattr(optimizer, "noise_std") else None

    def sent(self, arrays: ArrayRecord) -> ArrayRecord:
        out = dict(arrays.items())
        out[dp_rows.ROW_COUNT] = Array(dp_rows.zero_indicator({k: a.shape for k, a in arrays.items()}))
        return ArrayRecord(out)

    def new_arrays(self, sent: ArrayRecord, mean: ArrayRecord, answered: int) -> ArrayRecord:
        """The shared arrays after the round (those of `sent`, the server's arrays without the
        indicator), from the released `mean` of `answered` clients' vectors. The release's multiplier: z (client_clip_dp scales its noise
        to the clients averaged, SecureNoise), or under secagg_dp the survivors' share of it."""
        z = self.noise_multiplier
        if self.cfg["privacy"]["name"] == "secagg_dp":
            z = surviving_multiplier(z, answered, sample_size(self.cfg))
        current = {k: a.numpy() for k, a in sent.items()}  # what the round sent, before `sent()` added ROW_COUNT
        released = {k: a.numpy() for k, a in mean.items()}
        std = {} if self.corrected is not None else None  # each array's noise std in the move
        new, self.last = dp_rows.server_update(current, released, answered, self.budget, self.counts, z, std)
        if self.corrected is not None:
            self.corrected.noise_std = std  # the optimiser's next step is from this release
        return ArrayRecord({k: Array(np.asarray(new[k])) for k in current})


class StepAfterRelease:
    """central_dp / client_clip_dp under a server optimiser: Flower's DP wrapper around a
    plain FedAvg releases the noised mean, and the optimiser (FedAdam, FedYogi,
    FedAdagrad, FedAvgM) steps from that release. Wrapping the optimiser itself, as
    Flower's wrappers would, noises the optimiser's *output* while its moments see the
    un-noised mean: no longer a Gaussian mechanism on the clients' updates.
    With DP rows (`rows`), the release is first turned into row-wise averages
    (post-processing too); without an optimiser, server_decay follows."""

    def __init__(self, private, optimizer, rows: RowRelease | None = None, decay: float | None = None):
        self.strategy, self.optimizer, self.rows, self.decay = private, optimizer, rows, decay

    @property
    def clipping_norm(self):
        return self.strategy.clipping_norm

    @clipping_norm.setter
    def clipping_norm(self, value):
        self.strategy.clipping_norm = value

    def configure_train(self, server_round, arrays, config, grid):
        self._sent = arrays
        if self.rows is not None:
            arrays = self.rows.sent(arrays)
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(self, server_round, replies):
        from .strategies import decay_arrays, step_from
        replies = list(replies)
        mean, metrics = self.strategy.aggregate_train(server_round, replies)
        if mean is None:
            return None, metrics
        if self.rows is not None:
            mean = self.rows.new_arrays(self._sent, mean, sum(1 for r in replies if not r.has_error()))
        if self.optimizer is None:
            return (decay_arrays(mean, self.decay) if self.decay else mean), metrics
        return step_from(self.optimizer, server_round, self._sent, mean, metrics)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round, replies):
        return self.strategy.aggregate_evaluate(server_round, replies)


class UnclippedFractionUpdate:
    """Andrew et al. (2021) move the bound by the fraction of updates *not* clipped,
    C <- C * exp(-lr * (unclipped - target_quantile)), so C tracks that quantile of the
    update norms. Flower 1.41's adaptive wrappers pass the *clipped* fraction, which moves
    C away from it (all updates clipped -> C shrinks further). Same noisy count, flipped."""

    def _geometric_update(self, clipped_fraction: float) -> None:
        super()._geometric_update(1.0 - clipped_fraction)


def wrap_strategy(strategy, p: dict, noise_multiplier: float, num_sampled: int, mode: str):
    """Flower's DP wrapper for the mode and clipping kind, around the configured strategy."""
    side = "ServerSide" if mode == "central_dp" else "ClientSide"
    try:
        if p["clipping"] == "fixed":
            base = getattr(fs, f"DifferentialPrivacy{side}FixedClipping")
            cls = type(base.__name__, (SecureNoise, base), {"__doc__": base.__doc__})
            return cls(strategy, noise_multiplier, float(p["clipping_norm"]), num_sampled)
        base = getattr(fs, f"DifferentialPrivacy{side}AdaptiveClipping")
        cls = type(base.__name__, (SecureNoise, UnclippedFractionUpdate, base), {"__doc__": base.__doc__})
        return cls(strategy, noise_multiplier, num_sampled, initial_clipping_norm=float(p["clipping_norm"]),
                   target_clipped_quantile=float(p["target_clipped_quantile"]), clip_norm_lr=float(p["clip_norm_lr"]),
                   clipped_count_stddev=p.get("clipped_count_stddev"))
    except ValueError as e:
        raise ConfigError(f"privacy={mode}: {e}") from None
