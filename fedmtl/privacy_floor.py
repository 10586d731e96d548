"""A client's own privacy floor: what it accepts, whatever the server's run config asks.

The run config (privacy mode, exchange, click_mix, noise) is written by whoever submits
the run; a client that trusted it would let the server pick how much it learns. So
every client holds a floor of its own and refuses, with an error reply, any request
below it (the server counts it as `failed_by: refused`, and stops the run with one line
when every client of a round refused):

| floor key              | node-config key (SuperNode) | what it refuses                               |
| privacy                | privacy-floor               | training under a mode the floor does not accept (table below) |
| gram                   | answer-gram                 | click_mix's item Gram query (false: always; it is only ever answered under privacy=none) |
| sparse                 | send-sparse                 | exchange=sparse in the clear (its row set names the client's items; under SecAgg+ the rows travel masked) |
| min_noise_multiplier   | min-noise-multiplier        | noise it adds itself (local_dp, secagg_dp) below this multiplier z |
| secagg_min_threshold   | secagg-min-threshold        | a SecAgg+ setup whose reconstruction threshold is below it (secagg_guard.py) |

Which modes a floor accepts (each floor names what it demands of the server):

| floor          | accepts                                              | demand                               |
| none           | every mode                                           | nothing                              |
| central_dp     | central_dp, client_clip_dp, secagg_dp, local_dp      | the released model is DP             |
| client_clip_dp | client_clip_dp, secagg_dp, local_dp                  | ... and the client clips its own update |
| secagg         | secagg, secagg_dp, local_dp                          | the server never sees its update alone |
| secagg_dp      | secagg_dp, local_dp                                  | ... and the sum it sees is DP        |
| local_dp       | local_dp                                             | nothing leaves un-noised             |

In simulation the floor is the `client_floor` config block, applied inside every client;
a deployed SuperNode reads it from its own `--node-config` only (the run config, which
the server writes, never lowers it). Under secagg modes a client also refuses a
training request that is not a SecAgg+ stage message (a server that skipped the
protocol would otherwise get the update in the clear).
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from .checks import BEFORE_KEY
from .errors import ConfigError, PrivacyRefused
from .knob_names import PRIVACY, SECAGG_MODES

ACCEPTS = {
    "none": PRIVACY,
    "central_dp": ("central_dp", "client_clip_dp", "secagg_dp", "local_dp"),
    "client_clip_dp": ("client_clip_dp", "secagg_dp", "local_dp"),
    "secagg": ("secagg", "secagg_dp", "local_dp"),
    "secagg_dp": ("secagg_dp", "local_dp"),
    "local_dp": ("local_dp",),
}
# (the run's whole config, this client's floor) while the train handler's privacy mods run
# (privacy.client_privacy_mod): the mods are built once from a few config keys and cached, so
# what is this client's own reaches them here
CURRENT_CLIENT: contextvars.ContextVar = contextvars.ContextVar("fedmtl_client", default=(None, None))
# A node config that names none of the floor's keys has the floor of a config written before
# client_floor existed: it accepts every mode and query.
DEFAULTS = BEFORE_KEY["client_floor"]
NODE_KEYS = {"privacy-floor": "privacy", "answer-gram": "gram", "send-sparse": "sparse",
             "min-noise-multiplier": "min_noise_multiplier", "secagg-min-threshold": "secagg_min_threshold"}


@dataclass(frozen=True)
class Floor:
    privacy: str = "none"
    gram: bool = True
    sparse: bool = True
    min_noise_multiplier: float = 0.0
    secagg_min_threshold: int = 2

    @classmethod
    def parse(cls, values: dict, where: str) -> "Floor":
        """A floor from config values (`where` names their source in errors: the config
        block or the node config)."""
        unknown = set(values) - set(DEFAULTS)
        if unknown:
            raise ConfigError(f"{where}.{sorted(unknown)[0]}: unknown key (expected {', '.join(DEFAULTS)})")
        v = {**DEFAULTS, **values}
        if not isinstance(v["privacy"], str) or v["privacy"] not in ACCEPTS:
            raise ConfigError(f"{where}.privacy={v['privacy']}: expected one of {list(ACCEPTS)}")
        for key in ("gram", "sparse"):
            if isinstance(v[key], str) and v[key].lower() in ("true", "false"):
                v[key] = v[key].lower() == "true"
            if not isinstance(v[key], bool):
                raise ConfigError(f"{where}.{key}={v[key]!r}: expected true or false")
        z = v["min_noise_multiplier"]
        try:
            z = float(z) if not isinstance(z, bool) else None
        except (TypeError, ValueError):
            z = None
        if z is None or not z >= 0:
            raise ConfigError(f"{where}.min_noise_multiplier={v['min_noise_multiplier']!r}: expected a number >= 0")
        t = v["secagg_min_threshold"]
        try:
            t_ok = not isinstance(t, bool) and float(t) == int(float(t)) and int(float(t)) >= 2
        except (TypeError, ValueError):
            t_ok = False
        if not t_ok:
            raise ConfigError(f"{where}.secagg_min_threshold={t!r}: expected an integer >= 2")
        return cls(str(v["privacy"]), v["gram"], v["sparse"], z, int(float(t)))

    def accepts(self, mode: str) -> bool:
        return mode in ACCEPTS[self.privacy]


def check_config(cfg: dict) -> None:
    """The `client_floor` block of the config (validate's backfill gave it the keys it lacked)."""
    block = cfg["client_floor"]
    if not isinstance(block, dict):
        raise ConfigError(f"client_floor={block!r}: expected a block with {', '.join(DEFAULTS)}")
    cfg["client_floor"] = dict(Floor.parse(block, "client_floor").__dict__)


def client_floor(node_config: dict, bound: dict | None) -> Floor:
    """This client's floor: its node config's keys over, in simulation, the bound config's
    `client_floor`; a deployed client (nothing bound) never reads it from the run config."""
    base = dict((bound or {}).get("client_floor") or {}) if bound is not None else {}
    own = {NODE_KEYS[k]: v for k, v in node_config.items() if k in NODE_KEYS}
    return Floor.parse({**base, **own}, "node-config" if own else "client_floor")


def _refuse(what: str) -> None:
    raise PrivacyRefused(f"fedmtl refused: {what}")


def check_train(floor: Floor, cfg: dict, secagg_message: bool, noise_multiplier: float | None) -> None:
    """Refuse a training request below the floor. `secagg_message`: whether the request is a
    SecAgg+ stage message; `noise_multiplier`: the z of the noise this client would add
    itself (local_dp, secagg_dp), None when it adds none."""
    mode = cfg["privacy"]["name"]
    if not floor.accepts(mode):
        _refuse(f"privacy={mode} is below this client's floor (privacy floor {floor.privacy} accepts "
                f"{', '.join(ACCEPTS[floor.privacy])})")
    if mode in SECAGG_MODES and not secagg_message:
        _refuse(f"privacy={mode} but the training request is not a SecAgg+ message (the update would go in the clear)")
    exchange = cfg["exchange"]["name"]
    if exchange == "sparse" and not floor.sparse and mode not in SECAGG_MODES:  # under SecAgg+ rows travel masked
        _refuse("exchange=sparse names this client's items; its floor does not send sparse rows (sparse=false)")
    if noise_multiplier is not None and noise_multiplier < floor.min_noise_multiplier:
        _refuse(f"privacy={mode} asks for noise multiplier {noise_multiplier:.4g}, below this client's floor "
                f"min_noise_multiplier={floor.min_noise_multiplier:g}")


def check_gram(floor: Floor, cfg: dict) -> None:
    """Refuse click_mix's item Gram query unless the floor allows it and the run is privacy=none, or
    client_clip_dp within the floor (the part names the client's items in the clear)."""
    mode = cfg["privacy"]["name"]
    if not floor.gram:
        _refuse("item Gram query: this client does not answer them (gram=false)")
    # client_clip_dp: the part goes clipped (itemitem.clip_part) to the server that adds the noise,
    # the trust the mode already asks for the clipped updates
    if mode not in ("none", "client_clip_dp") or not floor.accepts(mode):
        _refuse(f"item Gram query under privacy={mode} with privacy floor {floor.privacy}: the part would name "
                "this client's items in the clear")
    from .itemitem import needed
    if mode == "client_clip_dp" and not needed(cfg):  # the part is answered for the run's DP Gram only
        _refuse("item Gram query under privacy=client_clip_dp in a run without click_mix: this client sends its "
                "clipped part only for the run's DP Gram, which the run's accounting counts")
