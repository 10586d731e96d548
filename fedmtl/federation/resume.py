"""Round checkpoints of a federated run, and resuming from the last one.

After every finished round (every `checkpoint_every`) the run folder gets

    checkpoint/round_NNNN/server.pkl   global arrays, the strategy's state (e.g. FedAdam's
                                       moments, FedAvgM's momentum), the RNG states
                                       (Python's `random` samples the clients), the rows
                                       of metrics.jsonl so far
    checkpoint/round_NNNN/clients/     every client's persisted state (personal parameters,
                                       task-weighting state), saved by the engine
    checkpoint/LATEST                  {"round": N, "dir": "round_NNNN"}

written in this order: the round folder is built under a temporary name and
renamed when complete, then LATEST is replaced atomically, then older round
folders are removed. A kill at any moment leaves LATEST naming a complete
checkpoint. Resuming reads LATEST, rewrites metrics.jsonl to exactly the rows of
the rounds it holds (dropping a row of a round that ended after it) and
continues with the next round; the result equals an uninterrupted run's.

Client states are engine business: the engine's grid offers
`save_client_states(folder)` / `load_client_states(folder)` (the in-process grid
does, in memory, on disk and with workers). Flower's Ray engine keeps them inside
its actors, so resume needs backend=inprocess.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import shutil
import signal
import threading
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..config_types import RunConfig
from ..errors import ConfigError, FedMTLError
from ..runfiles import read_jsonl, write_json

log = logging.getLogger("fedmtl")

FOLDER = "checkpoint"
LATEST = "LATEST"


def _is_strategy(obj) -> bool:
    from flwr.serverapp.strategy import Strategy
    return isinstance(obj, Strategy)


def _picklable(value) -> bool:
    try:
        pickle.dumps(value)
        return True
    except Exception:  # noqa: BLE001 (functions bound to the config, locks, ...)
        return False


def strategy_state(strategy) -> dict:
    """What a Flower strategy learned: its non-callable attributes, recursing into a
    wrapped strategy (DP wrappers hold the inner one), so FedAdam's m_t/v_t,
    FedAvgM's momentum and any wrapper's counters are kept without naming them."""
    state = {}
    for key, value in vars(strategy).items():
        if _is_strategy(value):
            state[key] = ("strategy", strategy_state(value))
        elif not callable(value) and _picklable(value):
            state[key] = ("value", value)
    return state


def restore_strategy(strategy, state: dict) -> None:
    for key, (kind, value) in state.items():
        if kind == "strategy":
            restore_strategy(getattr(strategy, key), value)
        else:
            setattr(strategy, key, value)


def rng_state() -> dict:
    return {"random": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def restore_rng(state: dict) -> None:
    random.setstate(state["random"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def _fsync_write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


@contextmanager
def round_commit():
    """Hold Ctrl-C while a finished round is written (its metrics row, then its
    checkpoint), so an interrupt never separates the two; it is raised right after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    try:
        old = signal.signal(signal.SIGINT, lambda signum, frame: pending.append(signum))
    except ValueError:  # not allowed here (e.g. an embedded interpreter)
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old if old is not None else signal.default_int_handler)
        if pending:
            raise KeyboardInterrupt


class Checkpointer:
    """Saves a checkpoint after finished rounds and restores the last one."""

    def __init__(self, out_dir: str | Path, cfg: RunConfig, grid):
        self.root = Path(out_dir) / FOLDER
        self.every = int(cfg["checkpoint_every"])
        self.num_rounds = int(cfg["num_rounds"])
        self.grid = grid
        self.clients = hasattr(grid, "save_client_states")
        self.extra: dict = {}  # after a resume: what `save(..., extra=)` stored (e.g. a privacy accountant)

    def save(self, rnd: int, arrays, strategy, history: list[dict], extra: dict | None = None) -> None:
        if self.every <= 0 or (rnd % self.every and rnd != self.num_rounds):
            return
        name = f"round_{rnd:04d}"
        tmp = self.root / f".{name}.tmp"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        server = {"round": rnd, "arrays": {k: v.numpy() for k, v in arrays.items()},
                  "strategy": strategy_state(strategy), "rng": rng_state(), "history": history,
                  "clients": self.clients, "extra": extra or {}}
        _fsync_write(tmp / "server.pkl", pickle.dumps(server))
        if self.clients:
            self.grid.save_client_states(tmp / "clients")
        final = self.root / name
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
        write_json(self.root / LATEST, {"round": rnd, "dir": name})
        for old in self.root.iterdir():
            if old.name not in (name, LATEST) and not old.name.startswith("."):
                shutil.rmtree(old, ignore_errors=True)

    def load(self) -> dict | None:
        """The last complete checkpoint's server state (None if no round finished yet);
        the engine's client states are restored on the way."""
        pointer = self.root / LATEST
        if not pointer.is_file():
            return None
        import json

        try:
            folder = self.root / json.loads(pointer.read_text())["dir"]
            server = pickle.loads((folder / "server.pkl").read_bytes())
        except (OSError, ValueError, KeyError, pickle.UnpicklingError, EOFError) as e:
            raise FedMTLError(f"{pointer}: unreadable checkpoint ({type(e).__name__}: {e})") from None
        if server["clients"]:
            if not self.clients:
                raise ConfigError("resume: this engine cannot restore client states; use backend=inprocess")
            self.grid.load_client_states(folder / "clients")
        elif self.clients:
            raise FedMTLError(f"{folder}: the checkpoint holds no client states (written under backend=ray); "
                              "it cannot be resumed with their personal parameters")
        return server


def resume(ckpt: Checkpointer, strategy, metrics_path: Path):
    """Restore the last checkpoint into `strategy`, the RNGs and the engine. Returns
    (next round, arrays or None, history) and leaves metrics.jsonl holding exactly
    the checkpoint's rows."""
    from flwr.app import Array, ArrayRecord

    from ..runfiles import append_jsonl

    server = ckpt.load()
    if server is None:
        log.info("resume: no finished round in %s; starting at round 1", ckpt.root.parent)
        if metrics_path.exists():
            metrics_path.unlink()
        return 1, None, []
    restore_strategy(strategy, server["strategy"])
    restore_rng(server["rng"])
    ckpt.extra = dict(server.get("extra") or {})
    history = server["history"]
    found = len(read_jsonl(metrics_path))
    tmp = metrics_path.with_name(f".{metrics_path.name}.tmp")
    if tmp.exists():
        tmp.unlink()
    for row in history:
        append_jsonl(tmp, row)
    if not history:
        tmp.write_text("")
    os.replace(tmp, metrics_path)
    if found != len(history):
        log.info("resume: metrics.jsonl had %d rows; kept the %d of the checkpoint", found, len(history))
    log.info("resume: continuing %s after round %d", ckpt.root.parent, server["round"])
    arrays = ArrayRecord({k: Array(v) for k, v in server["arrays"].items()})
    return server["round"] + 1, arrays, history


def resumed_config(cfg: RunConfig, out_dir: str | Path) -> tuple[dict, Path]:
    """The config and run folder a `resume=` run continues, validated (`cfg` is the
    command's composed config, not yet validated: the run validates one config, once).

    `resume=PATH` continues the run folder PATH; `resume=true` the run folder of this
    command (`hydra.run.dir=...`), or starts a new run there if it holds none yet.
    The folder's own config.json is used, so the continuation is the same run;
    other overrides on the command line are ignored (with a warning).
    """
    import json

    from ..config import validate

    r = cfg["resume"]
    if not isinstance(r, (bool, str)):
        return validate(cfg), Path(out_dir)  # which names what is wrong with it
    folder = Path(out_dir) if r is True else Path(r)
    stored_path = folder / "config.json"
    if not stored_path.is_file():
        if r is True:
            log.warning("resume=true: %s holds no run yet; starting a new one there", folder)
            return validate(cfg), folder
        raise ConfigError(f"resume={r}: {stored_path} not found; expected the folder of an earlier run")
    try:
        stored = json.loads(stored_path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"resume={r}: {stored_path} is unreadable ({e})") from None
    ignore = {"resume", "output_dir"}
    if isinstance(cfg.get("split"), dict) and cfg["split"].get("seed") is None:  # as validate resolves it
        cfg = {**cfg, "split": {**cfg["split"], "seed": cfg.get("seed")}}
    differ = sorted(k for k in set(cfg) | set(stored) if k not in ignore and cfg.get(k) != stored.get(k))
    if differ:
        log.warning("resume: using the config of %s; this command's values of %s are ignored", folder,
                    ", ".join(differ))
    stored["resume"] = True
    return validate(stored), folder
