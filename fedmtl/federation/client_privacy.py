"""`privacy=`, the client's side: the Flower mods of the train handler for this run's
privacy mode (`client_privacy_mod`: first the client's own floor, then the mode's mods;
the table of modes and the server's side: privacy.py).
"""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.client.mod.utils import make_ffn
from flwr.clientapp.mod import adaptiveclipping_mod, fixedclipping_mod
from flwr.supercore.differential_privacy import compute_clip_model_update

from .. import secure_random
from ..knob_names import SECAGG_MODES
from .accounting import client_key, distributed_noise_std, local_dp_std, noise_multiplier, own_noise_multiplier

WEIGHT_KEY = "num-examples"  # the strategies' weighted_by_key


def uniform_weight_mod(msg: Message, ctx: Context, call_next) -> Message:
    """Report weight 1 (not the example count), so that the DP mean is a plain mean: the noise
    z*C/m covers one client only if no client weighs more than 1/m."""
    reply = call_next(msg, ctx)
    if reply.has_content() and "metrics" in reply.content:
        reply.content["metrics"][WEIGHT_KEY] = 1.0
    return reply


def only_weight_mod(msg: Message, ctx: Context, call_next) -> Message:
    """local_dp: the reply's metrics say only weight 1: the example count and the
    training losses are functions of the client's data that no noise covers."""
    reply = call_next(msg, ctx)
    if reply.has_content() and "metrics" in reply.content:
        reply.content["metrics"] = MetricRecord({WEIGHT_KEY: 1.0})
    return reply


_LAST_SENT: tuple = ((), [])  # (the Array objects of the last request read, their NumPy arrays)


def _sent_arrays(sent: ArrayRecord) -> list[np.ndarray]:
    """The arrays of a training request, not to be written to. In one process every client of a
    round is sent the very same Array objects: they are read once a round, not once a client."""
    from .arrays import peek, same_objects

    objs = tuple(sent.values())
    last_objs, last = _LAST_SENT
    if same_objects(last_objs, objs):
        return last
    nds = [peek(a) for a in objs]
    globals()["_LAST_SENT"] = (objs, nds)  # one assignment: threads see the old or the new pair
    return nds


def fixed_clipping_mod(msg: Message, ctx: Context, call_next) -> Message:
    """Flower's `fixedclipping_mod` (the same checks and error replies, the update clipped by
    Flower's `compute_clip_model_update`, the same arrays out, bit for bit), without its .npy
    round trips in one process: the reply's arrays are read without a copy and sent on as kept
    arrays (`arrays.record`, bytes made only if the message leaves the process), and a round's
    request is read once. A DP round at 943 clients spent most of its time parsing and writing
    .npy bytes (each reply's arrays parsed by the mod, by the server's screening and by the
    aggregation; the request's once per client)."""
    from flwr.clientapp.mod import centraldp_mods as flower

    from .arrays import peek, record

    content = msg.content
    configs = content.config_records
    if (len(content.array_records) != 1 or len(configs) != 1
            or flower.KEY_CLIPPING_NORM not in next(iter(configs.values()))):
        return fixedclipping_mod(msg, ctx, call_next)  # Flower's own error reply
    sent = next(iter(content.array_records.values()))
    clipping_norm = float(next(iter(configs.values()))[flower.KEY_CLIPPING_NORM])
    reply = call_next(msg, ctx)
    if reply.has_error():
        return reply
    if len(reply.content.array_records) != 1:
        return flower._handle_multi_record_err("fixedclipping_mod", reply, ArrayRecord)
    key, out = next(iter(reply.content.array_records.items()))
    if list(sent.keys()) != list(out.keys()):
        return flower._handle_array_key_mismatch_err("fixedclipping_mod", reply)
    nds = [peek(a) for a in out.values()]  # not written to: the clipped arrays are new ones
    compute_clip_model_update(param1=nds, param2=_sent_arrays(sent), clipping_norm=clipping_norm)
    reply.content.array_records[key] = record({k: np.asarray(v) for k, v in zip(out.keys(), nds)})
    return reply


class SecureLocalDpMod:
    """What Flower's LocalDpMod does (clip the update to C with Flower's own clipping, add
    Gaussian noise to it), with the noise from the OS CSPRNG (secure_random) and the std of
    `local_dp_std`: Flower's mod draws it from NumPy's seedable global RNG."""

    def __init__(self, clipping_norm: float, std: float):
        self.clipping_norm, self.std = clipping_norm, std

    def __call__(self, msg: Message, ctx: Context, call_next) -> Message:
        if len(msg.content.array_records) != 1:
            raise ValueError("local_dp: the training message must hold exactly one ArrayRecord")
        sent = next(iter(msg.content.array_records.values()))
        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        key, record = next(iter(reply.content.array_records.items()))
        if list(record.keys()) != list(sent.keys()):
            raise ValueError("local_dp: the reply's arrays are not the ones sent")
        nds = record.to_numpy_ndarrays()
        compute_clip_model_update(nds, sent.to_numpy_ndarrays(), self.clipping_norm)
        secure_random.add_gaussian_inplace(nds, self.std)
        reply.content[key] = ArrayRecord({k: Array(np.asarray(v)) for k, v in zip(record.keys(), nds)})
        return reply


class GaussianNoiseMod:
    """Add N(0, std^2) to every uploaded array (the client's share of distributed DP noise),
    drawn from the OS CSPRNG (secure_random). The reply's arrays are read without parsing .npy
    bytes and the noised ones sent on as kept arrays (`arrays.record`: no .npy round trip in
    one process), as `fixed_clipping_mod` does before it."""

    def __init__(self, std: float):
        self.std = std

    def __call__(self, msg: Message, ctx: Context, call_next) -> Message:
        from .arrays import peek, record

        reply = call_next(msg, ctx)
        if reply.has_error():
            return reply
        for key, arrays in list(reply.content.array_records.items()):
            nds = [peek(a).copy() for a in arrays.values()]  # peek's array is not to be written to
            secure_random.add_gaussian_inplace(nds, self.std)
            reply.content.array_records[key] = record(dict(zip(arrays.keys(), nds)))
        return reply


@lru_cache(maxsize=8)
def _chain(cfg_json: str) -> tuple:
    cfg = json.loads(cfg_json)
    p = cfg["privacy"]
    mode = p["name"]
    if mode == "central_dp":
        return (uniform_weight_mod,)
    if mode == "client_clip_dp":
        return (uniform_weight_mod, fixed_clipping_mod if p["clipping"] == "fixed" else adaptiveclipping_mod)
    if mode == "local_dp":
        return (only_weight_mod, SecureLocalDpMod(float(p["clipping_norm"]), local_dp_std(p)))
    if mode in SECAGG_MODES:
        from flwr.client.mod import secaggplus_mod

        from .legacy import LegacyFitMod, blind_fitres_mod
        from .secagg_guard import SecAggGuard
        chain = [blind_fitres_mod, SecAggGuard(), secaggplus_mod, LegacyFitMod(cfg)]
        if mode == "secagg_dp":  # z: the client's floor checked it (floor.check_train)
            chain += [GaussianNoiseMod(distributed_noise_std(cfg, noise_multiplier(cfg))), fixed_clipping_mod]
        return tuple(chain)
    return ()


def client_mods(cfg: dict) -> tuple:
    """The Flower mods of the train handler for this run's privacy mode."""
    return _chain(client_key(cfg))


def client_privacy_mod(bound: dict | None):
    """One mod for the train handler: first the client's own floor (privacy_floor.py: a request
    below it is refused), then the run's privacy mods, chosen from the run's config (bound
    in simulation, read from the run config when deployed)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    from .client_state import config_from_context
    from ..privacy_floor import check_train, client_floor

    def privacy_mod(msg: Message, ctx: Context, call_next) -> Message:
        cfg = config_from_context(ctx, bound)
        floor = client_floor(ctx.node_config, bound)
        check_train(floor, cfg, RECORD_KEY_CONFIGS in msg.content, own_noise_multiplier(cfg))
        mods = client_mods(cfg)
        if not mods:
            return call_next(msg, ctx)
        # the cached mods read this client's config and floor from here (SecAggGuard: its
        # threshold floor; LegacyFitMod: the secure Gram's chunk needs the client's data);
        # imported here, not closed over: a ContextVar does not pickle (workers, Ray)
        from ..privacy_floor import CURRENT_CLIENT
        token = CURRENT_CLIENT.set((cfg, floor))
        try:
            return make_ffn(call_next, list(mods))(msg, ctx)
        finally:
            CURRENT_CLIENT.reset(token)

    return privacy_mod
