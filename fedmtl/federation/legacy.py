"""`privacy=secagg` / `secagg_dp`, the client's side: legacy fit records to and from the
ordinary train handler.

In Flower 1.41 the client's SecAgg+ (`secaggplus_mod`) works on legacy fit records.
`LegacyFitMod` turns the legacy FitIns into the message the ordinary train handler
expects (same core training code) and its reply back into a FitRes for `secaggplus_mod`
to quantise and mask; a request for a chunk of the secure item Gram goes to
secure_gram.answer_chunk. `blind_fitres_mod` then replaces the plaintext weight and
metrics of the FitRes, so each client's reply to the server holds only masked integers.

The server's round and what SecAgg+ protects: secagg_round.py; the masks (installed for
secaggplus_mod when secagg_workflow.py is imported, as this module does): secagg_workflow.py.
"""

from __future__ import annotations

import json

import numpy as np
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key as SAKey, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from ..config_types import RunConfig
from ..errors import DivergedError
from ..sparse_codec import ROW_COUNT, dense_rows
from .arrays import record as fast_record, same_objects
from . import secagg_workflow  # noqa: F401  (importing it installs mask_prg for secaggplus_mod)
from .secagg_round import LOSS_SCALE, NAMES_KEY, secure_rows
from .secure_gram import GRAM_KEY, answer_chunk


_last_parsed: list = [None, None]  # (the FitIns tensors, their arrays): every client of a round shares the bytes


def train_request(fitins) -> tuple[list[str], list[np.ndarray], int]:
    """(names, arrays, server round) of a SecAgg+ training request: what the train handler is
    given (LegacyFitMod; the cohort engine batches these, engine/cohort.py). In one process
    every node's FitIns holds the same bytes objects: they are parsed once a round, not once a
    client, and the arrays are read-only."""
    names = json.loads(str(fitins.config[NAMES_KEY]))
    tensors = fitins.parameters.tensors
    if not same_objects(_last_parsed[0], tensors):
        nds = parameters_to_ndarrays(fitins.parameters)
        for a in nds:
            a.setflags(write=False)
        _last_parsed[0], _last_parsed[1] = list(tensors), nds
    nds = _last_parsed[1]
    if len(names) != len(nds):
        raise ValueError(f"SecAgg+ FitIns: {len(nds)} arrays for {len(names)} names")
    return names, nds, int(fitins.config["server-round"])


def collect_stage_fitins(msg: Message):
    """The FitIns of a SecAgg+ collect-masked-vectors message that trains (its FitIns ride on
    that stage); None for any other message (the other stages, a secure Gram chunk)."""
    c = msg.content if msg.has_content() else None
    if c is None or RECORD_KEY_CONFIGS not in c or "fitins.parameters" not in c:
        return None
    if c[RECORD_KEY_CONFIGS].get(SAKey.STAGE) != Stage.COLLECT_MASKED_VECTORS:
        return None
    fitins = compat.recorddict_to_fitins(c, keep_input=True)
    return None if GRAM_KEY in fitins.config or NAMES_KEY not in fitins.config else fitins


class LegacyFitMod:
    """Legacy FitIns -> the train handler's message -> legacy FitRes (for secaggplus_mod).

    The FitRes holds the shared arrays (0-d ones as shape (1,): see
    secagg_workflow.dequantise), then under secagg the mean losses / LOSS_SCALE and this
    client's saturation figure: the fraction of
    its values that secaggplus_mod will clip at +-clipping_range once multiplied by its
    weight factor (the server gets the weighted mean of these fractions, nothing else).
    A non-finite update is not sent (the client fails; SecAgg+ treats it as dropped), and a
    weight above the round's max_weight is lowered to it (Flower only warns, then overflows)."""

    def __init__(self, cfg: RunConfig):
        p = cfg["privacy"]
        self.dp = p["name"] == "secagg_dp"
        self.clipping_norm = float(p["clipping_norm"]) if self.dp else None
        self.tasks = list(cfg["tasks"])
        self.rows = secure_rows(cfg)

    def __call__(self, msg: Message, ctx: Context, call_next) -> Message:
        content = msg.content
        fitins = compat.recorddict_to_fitins(content, keep_input=True)
        if GRAM_KEY in fitins.config:  # click_mix's secure item Gram (SecureGram): a chunk of this client's part
            return answer_chunk(msg, ctx, str(fitins.config[GRAM_KEY]))
        names, nds, server_round = train_request(fitins)
        config = ConfigRecord({"server-round": server_round})
        if self.dp:
            config[KEY_CLIPPING_NORM] = self.clipping_norm  # the client's own bound, for fixedclipping_mod
        msg.content = RecordDict({"arrays": fast_record(dict(zip(names, nds))), "config": config})
        try:
            reply = call_next(msg, ctx)
        finally:
            msg.content = content
        if reply.has_error():
            return reply
        arrays, metrics = reply.content["arrays"], reply.content["metrics"]
        if self.rows:  # a packed sparse update: full-size updates and the row indicator (sparse_codec)
            full, indicator = dense_rows({k: v.numpy() for k, v in arrays.items()},
                                         {n: a.shape for n, a in zip(names, nds)})
            out = [np.atleast_1d(full[n]) for n in names] + [indicator]
        else:
            out = [np.atleast_1d(arrays[n].numpy()) for n in names]
        if not self.dp:  # distributed DP noises only the arrays; these would go un-noised
            out.append(np.array([metrics.get(f"loss.{t}", 0.0) / LOSS_SCALE for t in self.tasks]))
        labels = [*names, *([ROW_COUNT] if self.rows else []), "the losses"]
        bad = [n for n, a in zip(labels, out) if not np.isfinite(a).all()]
        if bad:
            raise DivergedError(f"this client's update holds NaN/inf in {bad[0]}: not sent")
        sa = SecAggPlusState(**ctx.state.config_records[RECORD_KEY_STATE])
        weight = 1 if self.dp else min(int(metrics["num-examples"]), int(sa.max_weight))
        if not self.dp:
            factor = round(weight / sa.max_weight * sa.target_range) / sa.target_range  # secaggplus_mod's
            at_bound = sum(int((np.abs(a * factor) >= sa.clipping_range).sum()) for a in out)
            out.append(np.array([at_bound / sum(a.size for a in out)]))
        params = ndarrays_to_parameters(out)
        _last_fitres[0], _last_fitres[1] = list(params.tensors), out  # secaggplus_mod reads these bytes next
        fitres = FitRes(Status(Code.OK, ""), params, weight, {})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


_last_fitres: list = [None, None]  # (the tensors of the FitRes LegacyFitMod made last, the arrays they encode)


def _fitres_arrays(parameters) -> list[np.ndarray]:
    """secaggplus_mod's `parameters_to_ndarrays`: handed the very bytes objects LegacyFitMod just
    made (always, in one process), copies of the arrays it made them from; anything else parsed
    as Flower does. Parsing a .npy header costs more than copying a small array: this was a
    quarter of a 943-client SecAgg+ round's parsing."""
    if same_objects(_last_fitres[0], parameters.tensors):
        arrays, _last_fitres[0], _last_fitres[1] = _last_fitres[1], None, None
        return [np.array(a, copy=True) for a in arrays]
    return parameters_to_ndarrays(parameters)


def _install_fitres_arrays() -> None:
    import importlib

    importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod").parameters_to_ndarrays = _fitres_arrays


_install_fitres_arrays()


def blind_fitres_mod(msg: Message, ctx: Context, call_next) -> Message:
    """After secaggplus_mod has masked the reply, drop its plaintext weight and metrics
    (SecAgg+ carries the weight inside the masked vector)."""
    reply = call_next(msg, ctx)
    if reply.has_content() and "fitres.num_examples" in reply.content:
        reply.content["fitres.num_examples"] = MetricRecord({"num_examples": 1})
        reply.content["fitres.metrics"] = ConfigRecord({})
    return reply
