"""Injected client faults (`faults.drop_rate`, `faults.straggler_rate`) and injected
hostile replies, for tests and robustness experiments.

Each client's fate in a round is a pure function of (faults.seed, round,
partition id), so a run, its rerun and its resumed continuation inject the same
faults, and a test can recompute exactly which clients failed:

- `drop`: the client raises `InjectedDrop` when its training message arrives; the
  engine turns that into an error reply, as it does for a real crash. Its update
  for that round is lost and its personal state stays at its last good round.
- `late`: the client stalls before training, so its reply comes after the
  round's timeout and the server goes on without it. The stall lasts
  `faults.straggler_delay` seconds (default `round_timeout` + 1): of the client's
  own time on the in-process engine (which applies the deadline per client), and
  from the moment the server sent the message on Ray (whose grid applies it to the
  wall clock since the send). On Ray a stalled client holds its actor, so the
  engine starts `ray_extra_actors(cfg)` more actors than the cores allow: the
  stalled ones never take a slot a punctual client needs.

How a round counts the clients that failed, injected or not, and its quorum are in
failures.py. No Flower import at module level: the config check uses this module.

`inject_reply_mod` injects hostile replies (node config `inject-reply=KIND`): a client that
sends a weight of 1e9, a NaN, a wrong shape, a row index outside the catalogue, ... so that
tests and robustness experiments can show the server leaving it out (replies.py).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from ..config_types import RunConfig
from ..errors import ConfigError

log = logging.getLogger("fedmtl")

OK, DROP, LATE = "ok", "drop", "late"
MARK = "injected drop"  # in the message, so it survives every engine's error reply (Ray keeps only the text)


class InjectedDrop(RuntimeError):
    """A client failure injected by `faults.drop_rate`."""


@dataclass(frozen=True)
class FaultPlan:
    drop_rate: float = 0.0
    straggler_rate: float = 0.0
    straggler_delay: float = 0.0
    seed: int = 0

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "FaultPlan":
        f, timeout = cfg["faults"], cfg["round_timeout"]
        delay = f["straggler_delay"]
        if delay is None:
            delay = (float(timeout) if timeout is not None else 0.0) + 1.0
        seed = f["seed"]
        return cls(float(f["drop_rate"]), float(f["straggler_rate"]), float(delay),
                   int(cfg["seed"] if seed is None else seed))

    @property
    def active(self) -> bool:
        return self.drop_rate > 0 or self.straggler_rate > 0

    def fate(self, server_round: int, pid: int) -> str:
        """`ok`, `drop` or `late` for client `pid` in training round `server_round`."""
        if not self.active:
            return OK
        u = np.random.default_rng([self.seed, 0xFA17, int(server_round), int(pid)]).random()
        if u < self.drop_rate:
            return DROP
        if u < self.drop_rate + self.straggler_rate:
            return LATE
        return OK


def _backend(cfg: RunConfig) -> str | None:
    b = cfg.get("backend")
    return b.get("name") if isinstance(b, dict) else None


def before_training(cfg: RunConfig, server_round: int, pid: int, sent_at: float | None = None) -> None:
    """The ClientApp's hook: fail or stall this client if the plan says so. `sent_at`:
    when the server created the message (its metadata.created_at, a Unix time)."""
    plan = FaultPlan.from_config(cfg)
    fate = plan.fate(server_round, pid)
    if fate == DROP:
        raise InjectedDrop(f"{MARK}: client {pid} in round {server_round} (faults.drop_rate={plan.drop_rate})")
    if fate == LATE:
        if _backend(cfg) == "ray" and sent_at:
            # Flower's grid counts the deadline from the send, on the wall clock: stall until
            # straggler_delay after it (a client that waited for an actor has already spent part).
            time.sleep(max(0.0, sent_at + plan.straggler_delay - time.time()))
        else:
            time.sleep(plan.straggler_delay)


def ray_extra_actors(cfg: RunConfig) -> int:
    """How many actors Flower's Ray pool needs beyond one per `num_cpus_per_client` so that
    stalled clients never hold a slot a punctual client needs: the most stragglers that can
    be stalling at once. A straggler stalls until `straggler_delay` after its round's send,
    and a round with a straggler lasts at least `round_timeout` (the grid waits for it), so
    at most floor(delay / timeout) + 1 such rounds overlap; each contributes at most
    min(its stragglers among all clients, the clients sampled per round)."""
    plan = FaultPlan.from_config(cfg)
    if plan.straggler_rate <= 0:
        return 0
    n = int(cfg["num_clients"])
    sampled = min(n, max(int(n * cfg["fraction_train"]), min(int(cfg["min_train_clients"]), n)))
    per_round = sorted((min(sum(plan.fate(r, pid) == LATE for pid in range(n)), sampled)
                        for r in range(1, int(cfg["num_rounds"]) + 1)), reverse=True)
    overlap = int(plan.straggler_delay // float(cfg["round_timeout"])) + 1
    return int(sum(per_round[:overlap]))


class _HideInjected(logging.Filter):
    """Flower's engines log a client exception with its traceback at ERROR; an
    injected drop is expected, so its record is left out (the round's counts and
    the INFO line of the in-process engine still show it)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return MARK not in record.getMessage()


def quiet_injected_drops() -> None:
    """Keep Flower's error logs for injected drops out of the console (idempotent)."""
    flwr_log = logging.getLogger("flwr")
    if not any(isinstance(f, _HideInjected) for f in flwr_log.filters):
        flwr_log.addFilter(_HideInjected())


# --- injected hostile replies (tests and robustness experiments) -----------------------------

INJECT_KEY = "inject-reply"  # node config: this node tampers with its replies (inject_reply_mod)
TRAIN_FAULTS = {
    "weight": "num-examples = 1e9 (the attacker becomes the FedAvg mean)",
    "negative-weight": "num-examples = -5",
    "nan": "a NaN in the first float array",
    "shape": "the first array loses its last row (sparse: ::rows_delta its last column)",
    "missing-key": "the last array left out",
    "extra-key": "an array the server did not send",
    "row-negative": "sparse: row index -1 (the last item, were it used as an index)",
    "row-past": "sparse: a row index one past the catalogue",
    "row-duplicate": "sparse: the first row index twice",
    "truncated": "sparse: ::dense_delta one value short",
    "scale": "sparse int8: a row scale of 1e30",
    "int8-min": "sparse int8: a code of -128 (outside the encoder's -127..127)",
    "boost": "the update times 50 (within the per-value bound; robust.max_update_norm's case)",
}
GRAM_FAULTS = {
    "gram-nan": "a NaN in the Gram block",
    "gram-negative": "a negative co-occurrence count",
    "gram-asymmetric": "block[0, 1] != block[1, 0]",
}
BOOST = 50.0


def _first(arrays: dict, pred) -> str:
    for k, v in arrays.items():
        if pred(v):
            return k
    raise ValueError(f"{INJECT_KEY}: no array to tamper with")


def tamper_train(kind: str, arrays: dict, metrics: dict, sent: dict) -> None:
    """Edit a training reply (arrays and metrics by name, NumPy and numbers) in place as
    `kind` (TRAIN_FAULTS) says; `sent`: the arrays the server sent."""
    packed = "::rows" in arrays
    if kind == "weight":
        metrics["num-examples"] = 1e9
    elif kind == "negative-weight":
        metrics["num-examples"] = -5.0
    elif kind == "nan":
        k = _first(arrays, lambda v: v.dtype.kind == "f" and v.size)
        arrays[k] = arrays[k].copy()
        arrays[k].flat[0] = np.nan
    elif kind == "shape":
        if packed:
            arrays["::rows_delta"] = np.ascontiguousarray(arrays["::rows_delta"][:, :-1])
        else:
            k = _first(arrays, lambda v: v.ndim >= 1 and v.shape[0] > 1)
            arrays[k] = np.ascontiguousarray(arrays[k][:-1])
    elif kind == "missing-key":
        arrays.pop(list(arrays)[-1])
    elif kind == "extra-key":
        arrays["encoder.backdoor"] = np.zeros(3, np.float32)
    elif kind in ("row-negative", "row-past", "row-duplicate"):
        rows = arrays["::rows"].astype(np.int64)
        n_items = int(sent["encoder.item_emb.weight"].shape[0])
        rows[0] = {"row-negative": -1, "row-past": n_items, "row-duplicate": rows[-1]}[kind]
        arrays["::rows"] = rows if kind == "row-negative" else rows.astype(arrays["::rows"].dtype)
    elif kind == "truncated":
        arrays["::dense_delta"] = np.ascontiguousarray(arrays["::dense_delta"][:-1])
    elif kind == "scale":
        arrays["::rows_scale"] = arrays["::rows_scale"].copy()
        arrays["::rows_scale"][0, 0] = 1e30
    elif kind == "int8-min":
        arrays["::rows_delta"] = arrays["::rows_delta"].copy()
        arrays["::rows_delta"][0, 0] = -128
    elif kind == "boost":
        if not packed:
            for k, v in arrays.items():
                arrays[k] = np.asarray(sent[k] + BOOST * (v.astype(np.float64) - sent[k]), dtype=v.dtype)
        else:
            int8 = "::rows_scale" in arrays  # int8: the scales carry the magnitude
            for k in ("::rows_scale", "::dense_scale") if int8 else ("::rows_delta", "::dense_delta"):
                arrays[k] = np.asarray(arrays[k] * BOOST, dtype=arrays[k].dtype)
    else:
        raise ValueError(f"{INJECT_KEY}={kind!r}: not a training fault")


def tamper_gram(kind: str, items: np.ndarray, block: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A Gram part (itemitem.gram_part) edited as `kind` (GRAM_FAULTS) says."""
    block = np.array(block, copy=True)
    if kind == "gram-nan":
        block[0, 0] = np.nan
    elif kind == "gram-negative":
        block[0, 0] = -1
    elif kind == "gram-asymmetric":
        block[0, 1] += 1
    else:
        raise ValueError(f"{INJECT_KEY}={kind!r}: not a Gram fault")
    return items, block


def inject_reply_mod(msg, ctx, call_next):
    """A Flower mod for fault injection in tests and robustness experiments: a node whose
    node config holds `inject-reply=KIND` (TRAIN_FAULTS, GRAM_FAULTS) sends what a hostile
    client would, on every training reply (or Gram part) it gives. The server must leave
    such a reply out (replies.py); nothing here runs unless the node's operator asks."""
    kind = ctx.node_config.get(INJECT_KEY)
    reply = call_next(msg, ctx)
    if not kind or reply.has_error():
        return reply
    if kind not in TRAIN_FAULTS and kind not in GRAM_FAULTS:
        raise ConfigError(f"node-config {INJECT_KEY}={kind!r}: expected one of {[*TRAIN_FAULTS, *GRAM_FAULTS]}")
    from flwr.app import Array, ArrayRecord, MetricRecord

    content = reply.content
    if kind in GRAM_FAULTS and "gram" in content:
        items, block = tamper_gram(kind, content["gram"]["items"].numpy(), content["gram"]["block"].numpy())
        content["gram"] = ArrayRecord({"items": Array(items), "block": Array(block)})
    elif kind in TRAIN_FAULTS and "arrays" in content and "metrics" in content and "arrays" in msg.content:
        arrays = {k: v.numpy() for k, v in content["arrays"].items()}
        metrics = dict(content["metrics"])
        sent = {k: v.numpy().astype(np.float64) for k, v in msg.content["arrays"].items()}
        tamper_train(kind, arrays, metrics, sent)
        content["arrays"] = ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})
        content["metrics"] = MetricRecord(metrics)
    return reply
