"""`privacy=secagg` / `secagg_dp`: Flower's SecAgg+ on its legacy workflow, same clients;
the server's round (`SecAggRound`) and what travels in it.

In Flower 1.41 SecAgg+ exists only for the legacy server workflow (`SecAggPlusWorkflow`
driving a legacy `Strategy` through a `LegacyContext`) and legacy fit records on the
client (`secaggplus_mod`). Here:

- server: `SecAggRound` (this module) runs one SecAgg+ training round through the same
  `Grid` as every other round (so it works on the in-process grid and on Flower's Ray
  engine); our round loop keeps doing evaluation, logging and checkpoints.
- client: `LegacyFitMod` (legacy.py) turns the legacy FitIns into the message the
  ordinary train handler expects (same core training code) and its reply back into a
  FitRes for `secaggplus_mod` to quantise and mask. `blind_fitres_mod` then replaces
  the plaintext weight and metrics of the FitRes, so each client's reply to the server
  holds only masked integers.
- Flower's protocol with fedmtl's changes (masks, quorum, the check of the unmasked sum):
  secagg_workflow.py; click_mix's item Gram as a secure sum: secure_gram.py.

The names of the shared arrays (NAMES_KEY), the losses' scale (LOSS_SCALE) and what travels
after the arrays (`extra_names`, `secure_rows`) are here, for both sides.

What SecAgg+ protects (for docs/privacy.md). Under `privacy=secagg` the server receives
from each client only integers masked with pairwise and self masks, and learns the
weighted mean of the round's shared arrays (weights: example counts, clipped values
quantised to 2 * clipping_range / quantization_range), the weighted mean training
losses and the weighted fraction of clipped values; under `secagg_dp` it learns only the
plain mean of clipped, Gaussian-noised updates. It never sees one client's update, item
set, likes, loss or example count, provided that (1) it does not collude with
`reconstruction_threshold` of a client's `num_shares` share holders, (2) enough clients
answer that the sum mixes several of them (min_train_clients; one survivor's "sum" is its
update), and (3) for a server that deviates from the protocol: each client's guard refuses
a node named both active and dropped and a threshold not above half the share holders,
which stops the split of one client's secrets within what a single client can see; Flower
1.41 has no consistency round, so a server that tells different clients different
dropout lists, or invents dropouts, is limited only by that threshold rule. SecAgg+ does
not hide the sum itself (a round of two clients, or the difference of two rounds over
nested samples, gives one client's contribution; only secagg_dp bounds that), and it
does not validate inputs: a client can send any value in [-clipping_range,
clipping_range] with any weight up to max_weight, and offsets that keep the sum inside
its window are not detected. Values are clipped to +-`clipping_range` and quantised to
`quantization_range` levels; m clients need m * quantization_range <= 2**32.
"""

from __future__ import annotations

import json
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key as SAKey, Stage
from flwr.compat.common import recorddict_compat as compat

from .. import secure_random
from ..config_types import RunConfig
from ..errors import ConfigError
from ..sparse_codec import ROW_COUNT, rowwise_mean
from . import failures
from .accounting import secret_sampling
from .secagg_workflow import quorum_workflow

NAMES_KEY = "fedmtl-arrays"  # the names of the shared arrays, in the order of the legacy Parameters
LOSS_SCALE = 100.0  # losses travel as loss / LOSS_SCALE, inside SecAgg+'s clipping range
MAX_SATURATION = 1e-3  # a round whose quantised values sat at +-clipping_range more often stops the run


def secure_rows(cfg: RunConfig) -> bool:
    """exchange=sparse under privacy=secagg: each client sends its row update at full size (zero
    off its rows) and its 0/1 row indicator; the server gets only the two sums (sparse_codec).
    (Under secagg_dp the train handler itself sends DP rows, dp_rows.py: full-size weights and
    the indicator among the shared arrays, clipped and noised as they are.)"""
    return cfg["exchange"]["name"] == "sparse" and cfg["privacy"]["name"] == "secagg"


def extra_names(cfg: RunConfig) -> list[str]:
    """What travels masked after the shared arrays: with exchange=sparse the row indicator;
    under secagg the mean training losses and the clients' saturation figure; nothing more
    under secagg_dp (both would be un-noised)."""
    rows = [ROW_COUNT] if secure_rows(cfg) else []
    return rows + ([] if cfg["privacy"]["name"] == "secagg_dp" else ["losses", "saturation"])


def check_threshold(p: dict) -> None:
    """Every client's SecAggGuard refuses a reconstruction threshold not above half of the share
    holders (secagg_guard.py: two disjoint groups of holders would give a server both secrets
    of a client): say so before the run starts, not once every client has refused."""
    n, t = p["num_shares"], p["reconstruction_threshold"]
    if isinstance(t, float) and t <= 0.5 or isinstance(n, int) and isinstance(t, int) and t != 1 and 2 * t <= n:
        raise ConfigError(f"privacy.reconstruction_threshold={t}: must be above half of num_shares={n} (the "
                          "clients' SecAgg+ guard refuses less: a server could rebuild a client's secrets)")


def legacy_sample(cfg: RunConfig) -> dict:
    n = cfg["num_clients"]
    return dict(fraction_fit=cfg["fraction_train"], min_fit_clients=min(cfg["min_train_clients"], n),
                min_available_clients=min(cfg["min_train_clients"], n))


def max_weight(cfg: RunConfig) -> float:
    """SecAgg+'s max_weight: the largest client weight (more loses precision, less overflows)."""
    p = cfg["privacy"]
    if p["name"] == "secagg_dp":
        return 1.0
    if p.get("max_weight") is not None:
        return float(p["max_weight"])
    from ..data import federation_meta
    return float(federation_meta(cfg)["max_examples"])


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
    others did not (failures.round_counts' kinds: dropped, error, late)."""

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
        self.failed_by[stage] = failures.round_counts(messages, replies)["failed_by"]
        if stage == Stage.SETUP:  # a client's floor refuses at the first stage (privacy_floor.py)
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
        by = dict.fromkeys(failures.FAILURE_KINDS, 0)
        for stage in (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS):
            for k, v in self.failed_by.get(stage, {}).items():
                by[k] += v
        return {"sampled": sampled, "answered": answered, "failed": sampled - answered, "failed_by": by}


def client_manager(cfg: RunConfig):
    """The legacy client manager SecAgg+'s workflow samples from: under a DP mode one whose
    clients come in a CSPRNG order before each `random.sample` (the same argument as
    SecretOrder), else Flower's own."""
    from flwr.server.client_manager import SimpleClientManager

    if not secret_sampling(cfg):
        return SimpleClientManager()

    class SecretOrderClientManager(SimpleClientManager):
        def sample(self, num_clients, min_num_clients=None, criterion=None):
            with self._cv:
                order = secure_random.shuffled(self.clients.items())
                self.clients.clear()
                self.clients.update(order)
            return super().sample(num_clients, min_num_clients, criterion)

    return SecretOrderClientManager()


class SecAggRound:
    """One SecAgg+ training round: Flower's SecAggPlusWorkflow over a legacy FedAvg."""

    def __init__(self, cfg: RunConfig, rows=None):

        self.cfg, self.tasks = cfg, list(cfg["tasks"])
        self.rows = rows  # privacy.RowRelease under secagg_dp with exchange=sparse (DP rows)
        self.names: list[str] = []
        self._setup(legacy_sample(cfg), max_weight(cfg), float(cfg["privacy"]["clipping_range"]),
                    client_manager(cfg))  # a secret sample under secagg_dp (accounting.secret_sampling)

    def _setup(self, sample: dict, weight_bound: float, clip: float, manager) -> None:
        """The legacy FedAvg that samples, Flower's workflow (quorum, thresholds, quantisation)
        and the client manager, for the rounds this object runs."""
        from flwr.server.strategy import FedAvg as LegacyFedAvg

        p = self.cfg["privacy"]
        check_threshold(p)
        self.strategy = LegacyFedAvg(**sample, fraction_evaluate=0.0, accept_failures=True,
                                     on_fit_config_fn=self._fit_config,
                                     fit_metrics_aggregation_fn=lambda _: {})  # blinded; losses come masked
        self.workflow = quorum_workflow(
            failures.quorum(self.cfg), num_shares=p["num_shares"], reconstruction_threshold=p["reconstruction_threshold"],
            max_weight=weight_bound, clipping_range=clip, quantization_range=int(p["quantization_range"]),
            timeout=self.cfg.get("round_timeout"))
        self.client_manager = manager
        self.context = None

    def _run(self, rnd: int, ndarrays: list, grid):
        """One run of the workflow on `ndarrays` (the FitIns parameters): (what was sent, what
        the workflow left as the round's parameters, the counting grid). `got is sent`: nothing
        was released."""
        from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

        if self.context is None:
            self.context = self._legacy_context(grid)
        sent = compat.parameters_to_arrayrecord(ndarrays_to_parameters(ndarrays), True)
        state = self.context.state
        state.array_records[MAIN_PARAMS_RECORD] = sent
        state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: rnd, Key.START_TIME: time.time()})
        counting = _CountingGrid(grid)
        self.workflow(counting, self.context)
        return sent, state.array_records[MAIN_PARAMS_RECORD], counting

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
        if self.workflow.refused:
            return self.workflow.refused
        quorum = failures.skip_reason(counts, self.cfg)
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
        current = arrays
        if self.rows is not None:  # DP rows: the indicator travels as one more shared array (zeros)
            arrays = self.rows.sent(arrays)
        self.names = list(arrays.keys())
        dtypes = {k: a.numpy().dtype for k, a in arrays.items()}
        sent, got, counting = self._run(rnd, [arrays[k].numpy() for k in self.names], grid)
        counts = counting.counts()
        unmasked = counting.stages.get(Stage.UNMASK, [0, 0])[1]
        row = {"round": rnd, **counts, "bytes_down": counting.down, "bytes_up": counting.up,
               "bytes_up_per_client": int(counting.up / max(counts["sampled"], 1)),
               "secagg": {"stages": counting.stages, "aggregated": got is not sent}}
        if got is sent:  # SecAgg+ halted (too few vectors, clients or shares) or refused the sum
            reason = self._halt_reason(counting, counts)
            if self.workflow.refused:
                row["secagg"]["refused"] = reason
            return None, {}, row, reason
        nds = parameters_to_ndarrays(compat.arrayrecord_to_parameters(got, keep_input=True))
        extras = extra_names(self.cfg)
        tail = dict(zip(extras, nds[len(self.names):]))
        saturated = self._saturation(tail) if len(nds) == len(self.names) + len(extras) else None
        row["secagg"].update({"unmasked_by": unmasked, "saturated": saturated})
        if saturated is None:  # the clients' own figure is not a fraction: a tampered vector
            reason = ("SecAgg+ round refused: the released saturation figure is not a fraction in [0, 1] "
                      "(a tampered masked vector)")
            row["secagg"].update({"aggregated": False, "refused": reason})
            return None, {}, row, reason
        metrics = {f"loss.{t}": float(v) * LOSS_SCALE for t, v in zip(self.tasks, tail.get("losses", []))}
        if saturated > MAX_SATURATION:
            p = self.cfg["privacy"]
            raise ConfigError(
                f"privacy.clipping_range={p['clipping_range']}: in round {rnd}, {saturated:.2%} of the values SecAgg+ "
                f"quantised sat at +-{p['clipping_range']} (at most {MAX_SATURATION:.1%} allowed), so the aggregate "
                "would be wrong; raise privacy.clipping_range (the quantisation step grows with it)")
        shapes = {k: a.numpy().shape for k, a in arrays.items()}
        if secure_rows(self.cfg):  # the means of updates and row indicators -> row-wise averages
            current = {k: arrays[k].numpy() for k in self.names}
            mean_upd = {k: np.asarray(v, np.float64).reshape(shapes[k]) for k, v in zip(self.names, nds)}
            smallest = 1.0 / (max_weight(self.cfg) * max(counts["answered"], 1))  # one sender of weight 1
            new = rowwise_mean(current, mean_upd, np.asarray(tail[ROW_COUNT], np.float64), smallest)
            row["secagg"]["rows_sent"] = int((np.asarray(tail[ROW_COUNT]) > smallest / 2).sum())
            return ArrayRecord({k: Array(new[k]) for k in self.names}), metrics, row, None
        out = ArrayRecord({k: Array(np.asarray(v, dtype=dtypes[k]).reshape(shapes[k]))
                           for k, v in zip(self.names, nds)})
        if self.rows is not None:  # DP rows: row-wise averages from the release (privacy.RowRelease)
            out = self.rows.new_arrays(current, out, counts["answered"])
        return out, metrics, row, None

    def _saturation(self, tail: dict) -> float | None:
        """The fraction of released values that sat at +-clipping_range when quantised. Under
        secagg every client counts its own (weighted as its values are) and the count travels
        masked; under secagg_dp it would travel un-noised, so the server counts the coordinates
        where every client sat at the bound (its sum at an end of the window). None: the
        clients' figure is not a fraction (tampered)."""
        if "saturation" in tail:
            v = float(np.asarray(tail["saturation"]).ravel()[0])
            tol = 1e-3  # quantisation error of a value in [0, 1]
            return min(max(v, 0.0), 1.0) if -tol <= v <= 1 + tol else None
        rel = self.workflow.last_release
        q = int(self.cfg["privacy"]["quantization_range"])
        ends = sum(int(((a <= 0) | (a >= rel["active"] * q)).sum()) for a in rel["sum"])
        return ends / max(sum(int(np.asarray(a).size) for a in rel["sum"]), 1)
