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

What fedmtl changes in Flower's SecAgg+ (`_quorum_workflow`, `LegacyFitMod`, `mask_prg`,
and the client's `secagg_guard.SecAggGuard`): the unmasked sum is checked before release
(every coordinate of a sum of m honest quantised vectors lies in [0, m * Q]; outside it
the round is refused and nothing is released), dequantised out of place (Flower's
in-place arithmetic skipped 0-d arrays: aggregate=all's head offsets came back as
sum + (m - 1) * clipping_range, issue 24 item 8), its saturation reported
(`secagg.saturated` in metrics.jsonl; above MAX_SATURATION the run stops and names
privacy.clipping_range); masks come from the whole 32-byte secret (Flower: a 32-bit
seed), the neighbour ring from the OS CSPRNG (Flower: the seeded global `random`).

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
import math
import time

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.message_type import MessageType
from flwr.client.mod.secure_aggregation.secaggplus_mod import SecAggPlusState
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, RECORD_KEY_STATE, Key as SAKey, Stage
from flwr.compat.common import recorddict_compat as compat
from flwr.supercore.differential_privacy import KEY_CLIPPING_NORM

from .. import itemitem, secure_random
from ..errors import ConfigError, DivergedError
from ..sparse_codec import ROW_COUNT, dense_rows, rowwise_mean
from . import failures
from .accounting import secret_sampling

NAMES_KEY = "fedmtl-arrays"  # the names of the shared arrays, in the order of the legacy Parameters
LOSS_SCALE = 100.0  # losses travel as loss / LOSS_SCALE, inside SecAgg+'s clipping range
MAX_SATURATION = 1e-3  # a round whose quantised values sat at +-clipping_range more often stops the run


def secure_rows(cfg: dict) -> bool:
    """exchange=sparse under privacy=secagg: each client sends its row update at full size (zero
    off its rows) and its 0/1 row indicator; the server gets only the two sums (sparse_codec).
    (Under secagg_dp the train handler itself sends DP rows, dp_rows.py: full-size weights and
    the indicator among the shared arrays, clipped and noised as they are.)"""
    return ((cfg.get("exchange") or {}).get("name", "dense") == "sparse"
            and (cfg.get("privacy") or {}).get("name") == "secagg")


def extra_names(cfg: dict) -> list[str]:
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


def mask_prg(seed: bytes, num_range: int, dimensions_list: list[tuple[int, ...]]) -> list[np.ndarray]:
    """SecAgg+'s mask generator, keyed by the whole secret: a ChaCha20 keystream under
    SHA-256(secret), 8 bytes per value, reduced mod num_range (a power of 2, as Flower requires).

    Flower 1.41's `pseudo_rand_gen` XOR-folds the 32-byte secret to a 32-bit seed of NumPy's
    MT19937, so every mask has one of 2**32 seeds. A server that lists a client as dropped
    (or whose masked vector came after the timeout) legitimately rebuilds that client's
    pairwise masks; what is left on its vector is the self mask, and 2**32 seeds, each
    checked on four values against the quantised window [0, Q], recover the client's update
    (163 core-hours in a plain Python loop, far less in C). Same signature, same shapes;
    installed for both sides by `_install_mask_prg`."""
    import hashlib

    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

    sizes = [int(np.prod(d)) if len(d) else 1 for d in dimensions_list]
    key = hashlib.sha256(b"fedmtl secagg mask\0" + bytes(seed)).digest()
    stream = Cipher(algorithms.ChaCha20(key, bytes(16)), mode=None).encryptor().update(bytes(8 * sum(sizes)))
    values = np.frombuffer(stream, dtype="<u8")
    values = (values & np.uint64(num_range - 1) if num_range & (num_range - 1) == 0
              else values % np.uint64(num_range)).astype(np.int64)
    out, at = [], 0
    for d, size in zip(dimensions_list, sizes):
        out.append(values[at:at + size].reshape(d).copy())
        at += size
    return out


def _install_mask_prg() -> None:
    """The clients' secaggplus_mod draws its masks from `mask_prg` (its module's
    `pseudo_rand_gen`); the server's unmask stage (_quorum_workflow) calls mask_prg itself.
    Both sides of a fedmtl run import this module before SecAgg+ runs (privacy._chain,
    SecAggRound). A peer with Flower's own generator cannot unmask with ours: its round is
    refused by check_release, never silently wrong."""
    import importlib

    mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
    mod.pseudo_rand_gen = mask_prg


_install_mask_prg()


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


def check_release(recon: list, m: int, q: int) -> str | None:
    """Why the unmasked modular sum `recon` ([weight factor, arrays...]) cannot be a sum of
    `m` clients' quantised vectors, or None. Each client sends integers in [0, q] (its
    clipped value and its weight factor round(w / max_weight * q)), so every coordinate of
    an honest sum lies in [0, m * q] and the weight factor is above 0; anything else is a
    tampered masked vector or an m * q that overflowed the modulus."""
    factor = int(np.asarray(recon[0]).ravel()[0])
    outside = sum(int(((a < 0) | (a > m * q)).sum()) for a in (np.asarray(x) for x in recon[1:]))
    total = sum(int(np.asarray(x).size) for x in recon[1:])
    if not 0 < factor <= m * q or outside:
        return (f"SecAgg+ round refused: after unmasking, {outside} of {total} coordinates (weight factor {factor}) "
                f"lie outside [0, {m} * quantization_range]: a client tampered with its masked vector, or the "
                "modular sum overflowed")
    return None


def dequantise(recon: list, m: int, clip: float, q: int) -> list[np.ndarray]:
    """The weighted mean from the unmasked sum: SecAggPlusWorkflow.unmask_stage's arithmetic,
    done out of place. Flower's in-place `vec += offset; vec *= 1/total_weight` is a no-op
    for a 0-d array (its dequantize turns one into a NumPy scalar): the heads' 0-d offsets
    came back as sum(w_i x_i) + (m - 1) * clipping_range (7536 at 943 clients, issue 24 item 8)."""
    factor = int(np.asarray(recon[0]).ravel()[0])
    step = 2 * clip / q
    return [(np.asarray(a, dtype=np.float64) * step - m * clip) * (q / factor) for a in recon[1:]]


def _quorum_workflow(quorum: int, **kwargs):
    """Flower's SecAggPlusWorkflow, with these changes (and its masks from mask_prg):

    - it stops before unmasking when fewer than `quorum` masked vectors arrived
      (min_train_clients, as a plain round's rule): the server then never learns that
      round's sum; it keeps the round's protocol state (threshold, shares) to say why;
    - the neighbour ring is shuffled with the OS CSPRNG (Flower shuffles with the global
      `random`, which fedmtl seeds from `seed`);
    - unmasking checks the sum before releasing it (check_release: a tampered vector or an
      overflow refuses the round: nothing is released) and dequantises out of place (0-d arrays);
    - the released arrays and the unmasked integer sum stay on `last_release` for the checks
      that follow (saturation)."""
    import secrets

    from flwr.common.secure_aggregation.crypto.shamir import combine_shares
    from flwr.common.secure_aggregation.crypto.symmetric_encryption import generate_shared_key
    from flwr.common.secure_aggregation.ndarrays_arithmetic import (get_parameters_shape, parameters_addition,
                                                                     parameters_mod, parameters_subtraction)
    from flwr.server.workflow import SecAggPlusWorkflow
    from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key as WKey
    from flwr.supercore.primitives.asymmetric import bytes_to_private_key, bytes_to_public_key

    class QuorumSecAggPlusWorkflow(SecAggPlusWorkflow):
        def setup_stage(self, grid, context, state) -> bool:
            self.last_state, self.last_release, self.refused = state, None, None
            ok = super().setup_stage(grid, context, state)
            if state.nid_to_neighbours:  # the ring again, from the OS CSPRNG (Flower's ring rule)
                ring = sorted(state.sampled_node_ids)
                secrets.SystemRandom().shuffle(ring)
                half, n = state.num_shares >> 1, len(ring)
                state.nid_to_neighbours = {nid: {ring[(i + o) % n] for o in range(-half, half + 1)}
                                           for i, nid in enumerate(ring)}
                ok = ok and self._check_threshold(state)
            return ok

        def collect_masked_vectors_stage(self, grid, context, state) -> bool:
            ok = super().collect_masked_vectors_stage(grid, context, state)
            return ok and len(state.active_node_ids) >= quorum

        def unmask_stage(self, grid, context, state) -> bool:
            """Flower 1.41's unmask_stage (Apache-2.0), with check_release before anything is
            released and dequantise out of place."""
            current_round = context.state.config_records[MAIN_CONFIGS_RECORD][WKey.CURRENT_ROUND]
            active, dead = state.active_node_ids, state.sampled_node_ids - state.active_node_ids

            def make(nid: int) -> Message:
                nb = state.nid_to_neighbours[nid]
                record = ConfigRecord({SAKey.STAGE: Stage.UNMASK, SAKey.ACTIVE_NODE_ID_LIST: list(nb & active),
                                       SAKey.DEAD_NODE_ID_LIST: list(nb & dead)})
                return Message(RecordDict({RECORD_KEY_CONFIGS: record}), dst_node_id=nid,
                               message_type=MessageType.TRAIN, group_id=str(current_round))

            msgs = grid.send_and_receive([make(nid) for nid in active], timeout=self.timeout)
            state.active_node_ids = {m.metadata.src_node_id for m in msgs if not m.has_error()}
            shares: dict[int, list[bytes]] = {nid: [] for nid in state.sampled_node_ids}
            for msg in msgs:
                if msg.has_error():
                    state.failures.append(Exception(msg.error))
                    continue
                res = msg.content.config_records[RECORD_KEY_CONFIGS]
                for owner, share in zip(res[SAKey.NODE_ID_LIST], res[SAKey.SHARE_LIST], strict=True):
                    if owner in shares:  # a reply naming a node outside the round is ignored
                        shares[owner].append(share)
            masked = state.aggregate_ndarrays
            del state.aggregate_ndarrays
            shapes = get_parameters_shape(masked)
            for nid, share_list in shares.items():
                if len(share_list) < state.threshold:
                    return False  # SecAggRound says why (too few shares)
                secret = combine_shares(share_list)
                if nid in active:  # the self mask of a client whose vector is in the sum
                    masked = parameters_subtraction(masked, mask_prg(secret, state.mod_range, shapes))
                    continue
                for other in state.nid_to_neighbours[nid] - {nid}:  # a dropped client's pairwise masks
                    key = generate_shared_key(bytes_to_private_key(secret),
                                              bytes_to_public_key(state.nid_to_publickeys[other][0]))
                    mask = mask_prg(key, state.mod_range, shapes)
                    masked = (parameters_addition if nid > other else parameters_subtraction)(masked, mask)
            recon = parameters_mod(masked, state.mod_range)
            m, q = len(active), state.quantization_range
            self.refused = check_release(recon, m, q)
            if self.refused:
                return False
            arrays = [np.asarray(a) for a in dequantise(recon, m, state.clipping_range, q)]
            self.last_release = {"sum": recon[1:], "active": m}
            context.state.array_records[MAIN_PARAMS_RECORD] = compat.parameters_to_arrayrecord(
                ndarrays_to_parameters(arrays), True)
            return True

    wf = QuorumSecAggPlusWorkflow(**kwargs)
    wf.last_state = wf.last_release = wf.refused = None
    return wf


def client_manager(cfg: dict):
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

    def __init__(self, cfg: dict, rows=None):

        self.cfg, self.tasks = cfg, list(cfg["tasks"])
        self.rows = rows  # privacy.RowRelease under secagg_dp with exchange=sparse (DP rows)
        self.names: list[str] = []
        self._setup(_legacy_sample(cfg), max_weight(cfg), float(cfg["privacy"]["clipping_range"]),
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
        self.workflow = _quorum_workflow(
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


# --- client ---------------------------------------------------------------------------------------


def train_request(fitins) -> tuple[list[str], list[np.ndarray], int]:
    """(names, arrays, server round) of a SecAgg+ training request: what the train handler is
    given (LegacyFitMod; the cohort engine batches these, engine/cohort.py)."""
    names = json.loads(str(fitins.config[NAMES_KEY]))
    nds = parameters_to_ndarrays(fitins.parameters)
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

    The FitRes holds the shared arrays (0-d ones as shape (1,): see dequantise), then under
    secagg the mean losses / LOSS_SCALE and this client's saturation figure: the fraction of
    its values that secaggplus_mod will clip at +-clipping_range once multiplied by its
    weight factor (the server gets the weighted mean of these fractions, nothing else).
    A non-finite update is not sent (the client fails; SecAgg+ treats it as dropped), and a
    weight above the round's max_weight is lowered to it (Flower only warns, then overflows)."""

    def __init__(self, cfg: dict):
        p = cfg["privacy"]
        self.dp = p["name"] == "secagg_dp"
        self.clipping_norm = float(p["clipping_norm"]) if self.dp else None
        self.tasks = list(cfg["tasks"])
        self.rows = secure_rows(cfg)

    def __call__(self, msg: Message, ctx: Context, call_next) -> Message:
        content = msg.content
        fitins = compat.recorddict_to_fitins(content, keep_input=True)
        if GRAM_KEY in fitins.config:  # click_mix's secure item Gram (SecureGram): a chunk of this client's part
            return self._gram_chunk(msg, ctx, str(fitins.config[GRAM_KEY]))
        names, nds, server_round = train_request(fitins)
        config = ConfigRecord({"server-round": server_round})
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
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters(out), weight, {})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


    def _gram_chunk(self, msg: Message, ctx: Context, spec: str) -> Message:
        from ..errors import PrivacyRefused
        from .deployment import node_data

        from ..privacy_floor import CURRENT_CLIENT

        cfg, floor = CURRENT_CLIENT.get()
        if cfg is None:
            raise ValueError("secure item Gram: asked outside the train handler's privacy mod")
        if floor is not None and not floor.gram:
            raise PrivacyRefused("fedmtl refused: item Gram (secure sum): this client does not send its part "
                                 "(gram=false)")
        k, chunks = (int(x) for x in spec.split("/"))
        _, data = node_data(cfg, ctx)
        n_items = int(data.n_items) if hasattr(data, "n_items") else int(data.train_mask().shape[1])
        if not (0 <= k < chunks == gram_chunks(n_items)):
            raise ValueError(f"secure item Gram: chunk {spec} does not fit {n_items} items")
        if itemitem.dp_gram(cfg):  # secagg_dp: the chunk of the clipped part, plus this client's share of the noise
            chunk = gram_chunk_of(data.train_mask(), n_items, k, chunks, float(cfg["click_mix"]["dp_clip"]))
            chunk += secure_random.gaussian(chunk.shape, gram_share_std(cfg))
        else:
            chunk = gram_chunk_of(data.train_mask(), n_items, k, chunks)
        fitres = FitRes(Status(Code.OK, ""), ndarrays_to_parameters([chunk]), 1, {})
        return Message(compat.fitres_to_recorddict(fitres, keep_input=True), reply_to=msg)


def blind_fitres_mod(msg: Message, ctx: Context, call_next) -> Message:
    """After secaggplus_mod has masked the reply, drop its plaintext weight and metrics
    (SecAgg+ carries the weight inside the masked vector)."""
    reply = call_next(msg, ctx)
    if reply.has_content() and "fitres.num_examples" in reply.content:
        reply.content["fitres.num_examples"] = MetricRecord({"num_examples": 1})
        reply.content["fitres.metrics"] = ConfigRecord({})
    return reply


# --- click_mix under SecAgg+: the item Gram as a secure sum ----------------------------------------

GRAM_KEY = "fedmtl-gram"  # a FitIns config key: "k/K", the chunk of the Gram's upper triangle asked for
GRAM_CHUNK = 1 << 17  # values per chunk: 943 clients' masked chunks are ~1 GB at once on the server


def gram_chunks(n_items: int) -> int:
    return -(-(n_items * (n_items + 1) // 2) // GRAM_CHUNK)


_TRIU: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def triu_chunk(n_items: int, k: int, chunks: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of the k-th of `chunks` slices of the n x n upper triangle (row major)."""
    if n_items not in _TRIU:
        _TRIU.clear()
        _TRIU[n_items] = tuple(a.astype(np.int32) for a in np.triu_indices(n_items))
    r, c = _TRIU[n_items]
    lo = k * GRAM_CHUNK
    return r[lo:lo + GRAM_CHUNK], c[lo:lo + GRAM_CHUNK]


def gram_share_std(cfg: dict) -> float:
    """secagg_dp: the std of each client's share of the DP Gram's noise, z * dp_clip / sqrt(N)
    (every one of the N clients sends every chunk: the sum holds N(0, (z * dp_clip)^2))."""
    mix = cfg["click_mix"]
    return float(mix["dp_noise_multiplier"]) * float(mix["dp_clip"]) / math.sqrt(cfg["num_clients"])


def gram_chunk_of(train_mask, n_items: int, k: int, chunks: int, clip: float | None = None) -> np.ndarray:
    """This client's Gram part (its users' item co-occurrence counts) at the k-th chunk of the
    upper triangle, as float64 (small integers: SecAgg+ sums them exactly); with `clip`, the part
    scaled to Frobenius norm <= clip first (itemitem.clip_part: the DP Gram)."""
    items, block = itemitem.gram_part(train_mask)
    if clip is not None:
        block = itemitem.clip_part(block, clip)
    full = np.zeros((n_items, n_items), np.float32)
    full[np.ix_(items, items)] = block
    r, c = triu_chunk(n_items, k, chunks)
    return full[r, c].astype(np.float64)


class SecureGram(SecAggRound):
    """click_mix's item Gram under privacy=secagg: the clients' parts summed by SecAgg+, one
    chunk of the upper triangle per SecAgg+ round (before round 1), so the server learns the
    sum over all clients and no client's items. Every value is a small integer count: with
    clipping_range a power of two at least the largest client's user count and weight 1,
    SecAgg+'s quantisation is exact, and the sum is the same matrix the parts in the clear add
    up to. The clients then get the whole of EASE's B once (the server does not know whose
    rows are whose) and keep their own rows (server_app.ItemItem)."""

    def __init__(self, cfg: dict):
        from flwr.server.client_manager import SimpleClientManager

        from ..data import federation_for

        fed = federation_for(cfg)
        self.cfg, self.tasks, self.names, self.rows = cfg, [], ["gram"], None
        self.n_items = int(fed.meta["n_items"])
        self.chunks = gram_chunks(self.n_items)
        users = max(len(c) for c in fed.clients)
        self.clip = float(2 ** max(0, int(np.ceil(np.log2(max(users, 1))))))  # a count never exceeds it
        self.dp = itemitem.dp_gram(cfg)
        if self.dp:  # secagg_dp: a clipped part's entry is <= dp_clip; its noise share stays within 8 stds
            bound = float(cfg["click_mix"]["dp_clip"]) + 8 * gram_share_std(cfg)
            self.clip = float(2 ** max(0, int(np.ceil(np.log2(bound)))))
        self.k = 0
        self._setup(dict(_legacy_sample(cfg), fraction_fit=1.0), 1.0, self.clip, SimpleClientManager())  # everyone

    def _fit_config(self, rnd: int) -> dict:
        return {"server-round": 0, GRAM_KEY: f"{self.k}/{self.chunks}"}

    def gram(self, grid) -> tuple[np.ndarray, int, int]:
        """(the summed Gram, bytes up, clients summed); RoundFailure when a chunk is not aggregated."""
        from .failures import RoundFailure

        gram = np.zeros((self.n_items, self.n_items), np.float64)
        up, summed = 0, set()
        for k in range(self.chunks):
            self.k = k
            sent, got, counting = self._run(0, [np.zeros(1)], grid)  # the clients send their chunk, not this
            up += counting.up
            if got is sent:
                raise RoundFailure(f"secure item Gram: chunk {k + 1} of {self.chunks} not aggregated "
                                   f"({self._halt_reason(counting, counting.counts())})")
            m = self.workflow.last_release["active"]
            summed.add(m)
            mean = parameters_to_ndarrays(compat.arrayrecord_to_parameters(got, keep_input=True))[0]
            r, c = triu_chunk(self.n_items, k, self.chunks)
            total = np.asarray(mean, np.float64).ravel() * m
            gram[r, c] = total if self.dp else np.rint(total)  # DP: noised, no longer whole counts
        gram = np.triu(gram) + np.triu(gram, 1).T
        if len(summed) > 1:
            import logging
            logging.getLogger("fedmtl").warning("secure item Gram: chunks summed %s clients (dropouts between "
                                                "chunks)", sorted(summed))
        return gram, up, min(summed)
