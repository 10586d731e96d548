"""`privacy=secagg` / `secagg_dp`: Flower's SecAgg+ on its legacy workflow, same clients.

In Flower 1.41 SecAgg+ exists only for the legacy server workflow (`SecAggPlusWorkflow`
driving a legacy `Strategy` through a `LegacyContext`) and legacy fit records on the
client (`secaggplus_mod`). Here:

- server: `SecAggRound` runs one SecAgg+ training round through the same `Grid` as
  every other round (so it works on the in-process grid and on Flower's Ray engine);
  our round loop keeps doing evaluation, logging and checkpoints.
- client: `LegacyFitMod` turns the legacy FitIns into the message the ordinary train
  handler expects (same core training code) and its reply back into a FitRes for
  `secaggplus_mod` to quantise and mask. `blind_fitres_mod` then replaces the
  plaintext weight and metrics of the FitRes, so each client's reply to the server
  holds only masked integers.

The server learns the weighted mean of the shared arrays (weights: example counts,
or 1 under secagg_dp) and, under `secagg`, the mean training losses, which travel as
one more masked array. Values are clipped to +-`clipping_range` and quantised to
`quantization_range` levels; m clients need m * quantization_range <= 2**32.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key as SAKey, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from . import faults

NAMES_KEY = "fedmtl-arrays"  # the names of the shared arrays, in the order of the legacy Parameters
LOSS_SCALE = 100.0  # losses travel as loss / LOSS_SCALE, inside SecAgg+'s clipping range


def _legacy_sample(cfg: dict) -> dict:
    n = cfg["num_clients"]
    return dict(fraction_fit=cfg["fraction_train"], min_fit_clients=min(cfg["min_train_clients"], n),
                min_available_clients=min(cfg["min_train_clients"], n))


def max_weight(cfg: dict) -> float:
    """SecAgg+'s max_weight: the largest client weight (more loses precision, less overflows)."""
    p = cfg["privacy"]
    if p["name"] == "secagg_dp":
        return 1.0
    if p.get("max_weight") is not None:
        return float(p["max_weight"])
    from ..data import federation_for
    fed = federation_for(cfg)
    counts = fed.split.train.groupby("user").size()
    return float(max(int(counts.reindex(users).fillna(0).sum()) for users in fed.clients))


def _value_bytes(v) -> int:
    if isinstance(v, (bytes, str)):
        return len(v)
    if isinstance(v, (list, tuple)):
        return sum(_value_bytes(x) for x in v)
    return 8


def _bytes(content: RecordDict) -> int:
    """Payload bytes (ConfigRecord.count_bytes refuses the NumPy integers SecAgg+ puts there)."""
    return int(sum(sum(_value_bytes(k) + _value_bytes(v) for k, v in r.items()) if isinstance(r, ConfigRecord)
                   else r.count_bytes() for r in content.values()))


def _own_copy(msg: Message) -> Message:
    """The message with its own config records. Over a network every client receives its own
    copy; the workflow sends one RecordDict to all clients and secaggplus_mod edits what it
    receives, so a grid that passes objects (the in-process one) must not share them."""
    content = RecordDict({k: ConfigRecord(dict(v)) if isinstance(v, ConfigRecord) else v
                          for k, v in msg.content.items()})
    return Message(content, dst_node_id=msg.metadata.dst_node_id, message_type=msg.metadata.message_type,
                   group_id=msg.metadata.group_id)


class _CountingGrid:
    """The round's grid, counting bytes, who answered each SecAgg+ stage, and why the
    others did not (faults.round_counts' kinds: dropped, error, late)."""

    def __init__(self, grid):
        self.grid = grid
        self.down = self.up = 0
        self.stages: dict[str, list[int]] = {}  # stage -> [sent, answered]
        self.failed_by: dict[str, dict[str, int]] = {}  # stage -> {dropped, error, late}

    def __getattr__(self, name):
        return getattr(self.grid, name)

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        stage = messages[0].content.config_records[RECORD_KEY_CONFIGS][SAKey.STAGE] if messages else "none"
        self.down += sum(_bytes(m.content) for m in messages)
        replies = list(self.grid.send_and_receive([_own_copy(m) for m in messages], timeout=timeout))
        ok = [r for r in replies if not r.has_error()]
        self.up += sum(_bytes(r.content) for r in ok)
        self.stages[stage] = [len(messages), len(ok)]
        self.failed_by[stage] = faults.round_counts(messages, replies)["failed_by"]
        if stage == Stage.SETUP:  # a client's floor refuses at the first stage (floor.py)
            from .failures import check_refusals
            check_refusals("SecAgg+ setup", messages, replies, "the clients' privacy floors do not accept this "
                           "run's privacy mode or noise")
        return replies

    def counts(self) -> dict:
        """The round's sampled/answered/failed/failed_by, as a plain round reports them. A client
        answered when its masked vector arrived; it failed at the stage where it went silent
        (setup, key sharing or training: each stage is sent only to the previous one's survivors)."""
        sampled = self.stages.get(Stage.SETUP, [0, 0])[0]
        answered = self.stages.get(Stage.COLLECT_MASKED_VECTORS, [0, 0])[1]
        by = dict.fromkeys(faults.FAILURE_KINDS, 0)
        for stage in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS):
            for k, v in self.failed_by.get(stage, {}).items():
                by[k] += v
        return {"sampled": sampled, "answered": answered, "failed": sampled - answered, "failed_by": by}


def _quorum_workflow(quorum: int, **kwargs):
    """Flower's SecAggPlusWorkflow, stopped before unmasking when fewer than `quorum` masked
    vectors arrived (min_train_clients, as a plain round's rule): the server then never
    learns that round's sum. It keeps the round's protocol state (threshold, shares) to
    say why a round did not aggregate."""
    from flwr.server.workflow import SecAggPlusWorkflow

    class QuorumSecAggPlusWorkflow(SecAggPlusWorkflow):
        def setup_stage(self, grid, context, state) -> bool:
            self.last_state = state
            return super().setup_stage(grid, context, state)

        def collect_masked_vectors_stage(self, grid, context, state) -> bool:
            ok = super().collect_masked_vectors_stage(grid, context, state)
            return ok and len(state.active_node_ids) >= quorum

    wf = QuorumSecAggPlusWorkflow(**kwargs)
    wf.last_state = None
    return wf


class SecAggRound:
    """One SecAgg+ training round: Flower's SecAggPlusWorkflow over a legacy FedAvg."""

    def __init__(self, cfg: dict):
        from flwr.server.client_manager import SimpleClientManager
        from flwr.server.strategy import FedAvg as LegacyFedAvg

        p = cfg["privacy"]
        self.cfg, self.tasks = cfg, list(cfg["tasks"])
        self.names: list[str] = []
        self.strategy = LegacyFedAvg(**_legacy_sample(cfg), fraction_evaluate=0.0, accept_failures=True,
                                     on_fit_config_fn=self._fit_config,
                                     fit_metrics_aggregation_fn=lambda _: {})  # blinded; losses come masked
        self.workflow = _quorum_workflow(
            faults.quorum(cfg), num_shares=p["num_shares"], reconstruction_threshold=p["reconstruction_threshold"],
            max_weight=max_weight(cfg), clipping_range=float(p["clipping_range"]),
            quantization_range=int(p["quantization_range"]), timeout=cfg.get("round_timeout"))
        self.client_manager = SimpleClientManager()
        self.context = None

    def _fit_config(self, rnd: int) -> dict:
        return {"server-round": rnd, NAMES_KEY: json.dumps(self.names)}  # legacy configs hold scalars only

    def _legacy_context(self, grid):
        from flwr.server.compat.grid_client_proxy import GridClientProxy
        from flwr.server.compat.legacy_context import LegacyContext

        for node in grid.get_node_ids():
            self.client_manager.register(GridClientProxy(node_id=node, grid=grid, run_id=grid.run.run_id))
        return LegacyContext(Context(run_id=grid.run.run_id, node_id=0, node_config={}, state=RecordDict(),
                                 run_config={}), strategy=self.strategy, client_manager=self.client_manager)

    def _halt_reason(self, counting: _CountingGrid, counts: dict) -> str:
        """Why SecAgg+ stopped without an aggregate, in one line: too few answers for
        min_train_clients (as in a plain round), else too few for SecAgg+ itself."""
        quorum = faults.skip_reason(counts, self.cfg)
        if quorum is not None:
            return quorum
        by = ", ".join(f"{v} {k}" for k, v in counts["failed_by"].items() if v)
        stage = list(counting.stages)[-1] if counting.stages else Stage.SETUP
        st = self.workflow.last_state
        need = (f"; SecAgg+ needs reconstruction_threshold={st.threshold} of each client's {st.num_shares} "
                "share holders (num_shares) to answer") if st is not None and st.threshold else ""
        return (f"SecAgg+ halted at its {stage} stage: {counts['answered']} of {counts['sampled']} clients "
                f"answered ({by or 'none failed'}){need}")

    def __call__(self, rnd: int, arrays: ArrayRecord, grid):
        """Run the round; returns (new arrays or None, train metrics, the metrics.jsonl row,
        the reason no update was aggregated or None)."""
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        if self.context is None:
            self.context = self._legacy_context(grid)
        self.names = list(arrays.keys())
        dtypes = {k: a.numpy().dtype for k, a in arrays.items()}
        sent = compat.parameters_to_arrayrecord(ndarrays_to_parameters([arrays[k].numpy() for k in self.names]), True)
        state = self.context.state
        state.array_records[MAIN_PARAMS_RECORD] = sent
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd, Key.START_TIME: time.time()})
        counting = _CountingGrid(grid)
        self.workflow(counting, self.context)
        got = state.array_records[MAIN_PARAMS_RECORD]
        counts = counting.counts()
        unmasked = counting.stages.get(Stage.UNMASK, [0, 0])[1]
        row = {"round": rnd, **counts, "bytes_down": counting.down, "bytes_up": counting.up,
               "bytes_up_per_client": int(counting.up / max(counts["sampled"], 1)),
               "secagg": {"stages": counting.stages, "aggregated": got is not sent}}
        if got is sent:  # SecAgg+ halted (too few vectors, clients or shares): nothing was aggregated
            return None, {}, row, self._halt_reason(counting, counts)
        nds = parameters_to_ndarrays(compat.arrayrecord_to_parameters(got, keep_input=True))
        metrics = {}
        if len(nds) == len(self.names) + 1:  # secagg: the masked mean losses ride along
            metrics = {f"loss.{t}": float(v) * LOSS_SCALE for t, v in zip(self.tasks, nds.pop())}
        out = ArrayRecord({k: Array(np.asarray(v, dtype=dtypes[k])) for k, v in zip(self.names, nds)})
        row["secagg"]["unmasked_by"] = unmasked
        return out, metrics, row, None


# --- client ---------------------------------------------------------------------------------------


class LegacyFitMod:
    """Legacy FitIns -> the train handler's message -> legacy FitRes (for secaggplus_mod)."""

    def __init__(self, cfg: dict):
        p = cfg["privacy"]
        self.dp = p["name"] == "secagg_dp"
        self.clipping_norm = float(p["clipping_norm"]) if self.dp else None
        self.tasks = list(cfg["tasks"])

    def __call__(self, msg: Message, ctx: Context, call_next) -> Message:
        content = msg.content
        fitins = compat.recorddict_to_fitins(content, keep_input=True)
        names = json.loads(str(fitins.config[NAMES_KEY]))
        nds = parameters_to_ndarrays(fitins.parameters)
        if len(names) != len(nds):
            raise ValueError(f"SecAgg+ FitIns: {len(nds)} arrays for {len(names)} names")
        config = ConfigRecord({"server-round": int(fitins.config["server-round"])})
        if self.dp:
            config[KEY_CLIPPING_NORM] = self.clipping_norm  # the client's own bound, for fixedclipping_mod
        msg.content = RecordDict({"arrays": ArrayRecord({n: Array(a) for n, a in zip(names, nds)}),
                                  "config": config})
        try:
            reply = call_next(msg, ctx)
        finally:
            msg.content = content
        if reply.has_error():
            return reply
        arrays, metrics = reply.content["arrays"], reply.content["metrics"]
        out = [arrays[n].numpy() for n in names]
        if not self.dp:  # distributed DP noises only the arrays; the losses would go un-noised
            out.append(np.array([metrics.get(f"loss.{t}", 0.0) / LOSS_SCALE for t in self.tasks]))
        weight = 1 if self.dp else int(metrics["num-examples"])
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out), weight, {})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def blind_fitres_mod(msg: Message, ctx: Context, call_next) -> Message:
    """After secaggplus_mod has masked the reply, drop its plaintext weight and metrics
    (SecAgg+ carries the weight inside the masked vector)."""
    reply = call_next(msg, ctx)
    if reply.has_content() and "fitres.num_examples" in reply.content:
        reply.content["fitres.num_examples"] = MetricRecord({"num_examples": 1})
        reply.content["fitres.metrics"] = ConfigRecord({})
    return reply
