"""What a DP run's guarantee is computed from: the ledger of releases, the noise multipliers,
and whether a round's sample must be secret (federation/privacy.py wires them into Flower).

Accounting (`Ledger`): every released aggregate is one Gaussian event (user level), each
with the neighbouring relation it assumes:
- every client in every round: no amplification, add-or-remove-one, multiplier z. Such
  releases compose exactly: T Gaussian mechanisms of multipliers z_1..z_T are one of
  multiplier (sum 1/z_t^2)^(-1/2) (Dong, Roth and Su 2019, Cor. 3.3), whose (epsilon, delta)
  curve is known in closed form (Balle and Wang 2018, Thm 8): `ExactGaussian` reports that
  epsilon, the exact one (Flower's RDP accountant over-reports it: 7.995 for 45 releases at
  z 4.28, exactly 7.433), so a target epsilon needs less noise (z 4.03 for 8 after 45 rounds);
- a secret sample of m of N clients (without replacement): replace-one neighbours,
  whose sensitivity is 2C, so the multiplier given is z / 2; amplification by
  sampling holds only because the sample comes from the OS CSPRNG;
- local_dp: each client's own upload is the release; any two clipped updates differ
  by up to 2C (replace-one), so the multiplier is the noise std over 2C (and the
  noise is scaled to 2C unless `privacy.sensitivity` says otherwise); no amplification, so
  `ExactGaussian` too;
- sampled rounds: Flower's `RdpAccountant` (amplification by sampling has no closed form).
The epsilon at `privacy.delta` goes into metrics.jsonl every round;
`privacy.target_epsilon` stops the run before the round that would exceed it, or
picks z for `num_rounds` when `privacy.noise_multiplier` is null.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache

from flwr.supercore.privacy_accounting import (GaussianPrivacyEvent, NeighboringRelation, PrivacyConfig,
                                               SamplingMethod)

from ..errors import ConfigError
from ..knob_names import DP_MODES


def sample_size(cfg: dict) -> int:
    """How many clients Flower samples per training round (FedAvg.configure_train's rule)."""
    n = cfg["num_clients"]
    return min(n, max(int(n * cfg["fraction_train"]), min(cfg["min_train_clients"], n)))


def local_dp_sensitivity(p: dict) -> float:
    """The L2 sensitivity local DP's noise is scaled to: `privacy.sensitivity`, or 2C.

    Local DP protects a client's whole update against anyone who sees it: any two
    clipped updates differ by at most 2C (replace-one), not C (add-or-remove-one)."""
    return float(p.get("sensitivity") or 2 * float(p["clipping_norm"]))


def local_dp_std(p: dict) -> float:
    """The std of a local_dp client's noise: sensitivity * sqrt(2 ln(1.25/delta)) / epsilon
    (the classic Gaussian mechanism's calibration; the epsilon reported is RDP's, below)."""
    return local_dp_sensitivity(p) * math.sqrt(2 * math.log(1.25 / p["delta"])) / p["epsilon"]


def local_dp_multiplier(p: dict) -> float:
    """local_dp's noise multiplier for the accountant: std over 2C, the replace-one
    sensitivity of a clipped update (whatever `privacy.sensitivity` says)."""
    return local_dp_std(p) / (2 * float(p["clipping_norm"]))


# --- accounting ----------------------------------------------------------------------------------


def gaussian_epsilon(mu: float, delta: float) -> float:
    """The exact epsilon at `delta` of a Gaussian mechanism whose sensitivity is `mu` noise
    stds (Balle and Wang 2018, Thm 8): the least epsilon >= 0 with
    Phi(-epsilon / mu + mu / 2) - e^epsilon Phi(-epsilon / mu - mu / 2) <= delta."""
    from scipy.special import log_ndtr, ndtr

    if mu <= 0:
        return 0.0

    def excess(eps: float) -> float:  # delta(eps) - delta, decreasing in eps
        return float(ndtr(-eps / mu + mu / 2) - math.exp(eps + log_ndtr(-eps / mu - mu / 2))) - delta

    if excess(0.0) <= 0:
        return 0.0
    lo, hi = 0.0, 1.0
    while excess(hi) > 0:
        lo, hi = hi, hi * 2
    for _ in range(200):  # bisection to the float's resolution
        mid = (lo + hi) / 2
        if mid in (lo, hi):
            break
        lo, hi = (mid, hi) if excess(mid) > 0 else (lo, mid)
    return hi


class ExactGaussian:
    """The accountant of releases without amplification (every client in every round, local DP):
    a composition of Gaussian mechanisms is one Gaussian mechanism with mu^2 = sum of 1/z^2
    (Dong, Roth and Su 2019, Cor. 3.3), whose epsilon `gaussian_epsilon` gives exactly. The
    interface of Flower's RdpAccountant, as the Ledger uses it."""

    def __init__(self, delta: float):
        self.delta, self.mu2, self.num_releases = delta, 0.0, 0

    @staticmethod
    def _mu2(event: GaussianPrivacyEvent, count: int = 1) -> float:
        z = float(event.noise_multiplier)
        if not z > 0:
            raise ValueError(f"noise multiplier {z}: expected > 0")
        return count / (z * z)

    def compose(self, event: GaussianPrivacyEvent, count: int = 1) -> None:
        self.mu2 += self._mu2(event, count)
        self.num_releases += count

    def get_epsilon(self, delta: float) -> float:
        return gaussian_epsilon(math.sqrt(self.mu2), delta)

    def would_exceed(self, event: GaussianPrivacyEvent, max_epsilon: float) -> bool:
        return gaussian_epsilon(math.sqrt(self.mu2 + self._mu2(event)), self.delta) > max_epsilon

    def state_dict(self) -> dict:
        return {"mu2": self.mu2, "num_releases": self.num_releases}

    def load_state_dict(self, state: dict, spent: list[float] | None = None) -> None:
        """A checkpoint's state; one an RDP ledger wrote (before this accountant) is rebuilt
        from the multipliers the ledger spent."""
        if "mu2" in state:
            self.mu2, self.num_releases = float(state["mu2"]), int(state["num_releases"])
        else:
            self.mu2 = sum(1.0 / (z * z) for z in spent or [])
            self.num_releases = len(spent or [])


class Ledger:
    """The privacy spent so far, one Gaussian event per released aggregate (`ExactGaussian`
    without amplification, Flower's RdpAccountant with it)."""

    def __init__(self, population: int, sample: int, delta: float, local: bool = False):
        from flwr.serverapp import RdpAccountant

        self.local = local  # local DP: each client's own releases, no sampling amplification
        self.population, self.sample = (1, 1) if local else (population, sample)
        self.amplified = self.sample < self.population
        self.delta = delta
        self.config = PrivacyConfig(
            target_delta=delta, population_size=self.population,
            neighboring_relation=(NeighboringRelation.REPLACE_ONE if self.amplified
                                  else NeighboringRelation.ADD_OR_REMOVE_ONE),
            sampling_method=SamplingMethod.WITHOUT_REPLACEMENT if self.amplified else SamplingMethod.NO_AMPLIFICATION)
        self.accountant = RdpAccountant(self.config) if self.amplified else ExactGaussian(delta)
        self.spent: list[float] = []  # the multiplier of every release, as configured (before z / 2)

    @property
    def method(self) -> str:
        """How the epsilon is computed, in words (summary.json's privacy.accounting)."""
        if self.amplified:
            return "rdp, " + self.config.sampling_method.value
        return "exact gaussian composition, " + self.config.sampling_method.value

    @property
    def relation(self) -> str:
        """The neighbouring relation the reported epsilon is for, in words."""
        if self.local:
            return "replace-one: any two clipped updates of one client (sensitivity 2C)"
        if self.amplified:
            return "replace-one user, secret sampling without replacement"
        return "add-or-remove-one user"

    def event(self, noise_multiplier: float, everyone: bool = False) -> GaussianPrivacyEvent:
        """A release at `noise_multiplier` of the round's sample (or of `everyone`: click_mix's
        DP Gram, summed over every client, so no amplification by sampling)."""
        z = noise_multiplier / 2 if self.amplified else noise_multiplier
        m = self.population if everyone else self.sample
        return GaussianPrivacyEvent(noise_multiplier=z, sample_size=m, population_size=self.population)

    def load_state_dict(self, accountant: dict, spent: list[float]) -> None:
        """A checkpoint's ledger: its accountant's state and the multipliers it spent (from which
        the exact accountant rebuilds a state an RDP ledger wrote)."""
        self.spent = [float(z) for z in spent]
        if isinstance(self.accountant, ExactGaussian):
            self.accountant.load_state_dict(accountant, self.spent)
        else:
            self.accountant.load_state_dict(accountant)

    def spend(self, noise_multiplier: float, everyone: bool = False) -> None:
        self.accountant.compose(self.event(noise_multiplier, everyone))
        self.spent.append(float(noise_multiplier))

    def epsilon_known_sample(self) -> float:
        """Epsilon against a party that knows which clients each round sampled (the server
        always does: it sent them the round): the same releases without amplification."""
        if not self.amplified:
            return self.epsilon()
        known = Ledger(1, 1, self.delta)
        for z in self.spent:
            known.spend(z)
        return known.epsilon()  # (the Gram's release was over everyone: no amplification either way)

    def would_exceed(self, noise_multiplier: float, target_epsilon: float) -> bool:
        return self.accountant.would_exceed(self.event(noise_multiplier), max_epsilon=target_epsilon)

    @property
    def releases(self) -> int:
        return self.accountant.num_releases

    def epsilon(self) -> float:
        return self.accountant.get_epsilon(self.delta) if self.releases else 0.0

    def epsilon_after(self, noise_multiplier: float, rounds: int, gram: float | None = None) -> float:
        """Epsilon after `rounds` releases at `noise_multiplier` (and first the DP Gram's at `gram`),
        from a fresh ledger."""
        fresh = Ledger(self.population, self.sample, self.delta)
        if gram is not None:
            fresh.spend(gram, everyone=True)
        fresh.accountant.compose(fresh.event(noise_multiplier), count=rounds)
        return fresh.accountant.get_epsilon(self.delta)


def noise_multiplier(cfg: dict) -> float:
    """A DP mode's noise multiplier z, as the server and the clients each compute it (a client
    never takes the server's number): local_dp's std over 2C; else privacy.noise_multiplier,
    or the smallest z whose epsilon after num_rounds is within privacy.target_epsilon."""
    p = cfg["privacy"]
    if p["name"] == "local_dp":
        return local_dp_multiplier(p)
    if p.get("noise_multiplier") is not None:
        return float(p["noise_multiplier"])
    return calibrate_noise(Ledger(cfg["num_clients"], sample_size(cfg), float(p["delta"])),
                           float(p["target_epsilon"]), cfg["num_rounds"], gram_noise_multiplier(cfg))


def surviving_multiplier(noise_multiplier: float, answered: int, asked: int) -> float:
    """secagg_dp: each of the `asked` clients adds its share of the noise, std z*C/sqrt(asked), so
    a sum of `answered` holds std z*C*sqrt(answered/asked): a release at this multiplier."""
    return noise_multiplier * math.sqrt(min(answered, asked) / max(asked, 1))


def gram_noise_multiplier(cfg: dict) -> float | None:
    """click_mix's DP Gram release (client_clip_dp, secagg_dp): its noise multiplier, or None."""
    from ..itemitem import dp_gram, needed
    if cfg["mode"] != "federated" or not needed(cfg) or not dp_gram(cfg):
        return None
    return float(cfg["click_mix"]["dp_noise_multiplier"])


def calibrate_noise(ledger: Ledger, target_epsilon: float, rounds: int, gram: float | None = None) -> float:
    """The smallest noise multiplier (to 0.1%) whose epsilon after `rounds` (and the DP Gram's
    release at `gram`, when the run has one) is <= target."""
    if gram is not None and ledger.epsilon_after(1e6, rounds, gram) > target_epsilon:
        raise ConfigError(f"privacy.target_epsilon={target_epsilon}: click_mix's DP Gram alone "
                          f"(click_mix.dp_noise_multiplier={gram}) spends more; raise it")
    lo, hi = 1e-2, 1.0
    while ledger.epsilon_after(hi, rounds, gram) > target_epsilon:
        lo, hi = hi, hi * 2
        if hi > 1e5:
            raise ConfigError(f"privacy.target_epsilon={target_epsilon}: not reachable in {rounds} rounds")
    while hi / lo > 1.001:
        mid = math.sqrt(lo * hi)
        lo, hi = (lo, mid) if ledger.epsilon_after(mid, rounds, gram) <= target_epsilon else (mid, hi)
    return hi


def secret_sampling(cfg: dict, phase: str = "train") -> bool:
    """Whether this phase's sample must be secret: training rounds of the DP modes, whose
    accounting claims amplification by sampling (an adversary who can replay the sample
    from `seed` gets no amplification)."""
    return phase == "train" and cfg["privacy"]["name"] in DP_MODES


def distributed_noise_std(cfg: dict, noise_multiplier: float) -> float:
    """Each of the m sampled clients adds std z*C/sqrt(m): the sum then holds std z*C, the mean z*C/m,
    as central DP would, without anyone seeing an un-noised sum."""
    return noise_multiplier * float(cfg["privacy"]["clipping_norm"]) / math.sqrt(sample_size(cfg))


@lru_cache(maxsize=8)
def _own_noise(cfg_json: str) -> float | None:
    cfg = json.loads(cfg_json)
    return noise_multiplier(cfg) if cfg["privacy"]["name"] in ("local_dp", "secagg_dp") else None


def own_noise_multiplier(cfg: dict) -> float | None:
    """The multiplier z of the noise a client adds itself in this run (local_dp: its std over
    2C; secagg_dp: the z its share is cut from), None in the modes where it adds none."""
    return _own_noise(client_key(cfg))


def client_key(cfg: dict) -> str:
    """The config keys a client's privacy chain and own noise depend on: the cache key of both."""
    keys = ("privacy", "num_clients", "fraction_train", "min_train_clients", "num_rounds", "tasks", "exchange",
            "mode", "click_mix")  # noise_multiplier(cfg) reads the last two (the DP Gram's share of the budget)
    return json.dumps({k: cfg.get(k) for k in keys}, sort_keys=True)
