"""What a deployed run adds to the ServerApp and ClientApp.

In a deployment (`flower-superlink`, N x `flower-supernode`, `flwr run`) nothing is
bound into the apps: the experiment comes from the run config (`overrides`, the
same Hydra overrides as `python -m fedmtl.simulate`), each SuperNode learns which
partition it holds from its `--node-config`, and the ServerApp picks its run folder
from `output-dir`.

Node config keys (`flower-supernode --node-config '...'`):

| key              | meaning                                                          |
| partition-id     | required: which of the run's `num_clients` partitions this node is |
| num-partitions   | optional: checked against the run's `num_clients`                |
| split-path       | optional: a folder with this node's own train.tsv / test.tsv      |
|                  | (raw ids, as written by `python -m fedmtl.deploy.export`); the    |
|                  | node then trains on exactly the users in those files             |
| dataset-path     | optional: where this machine keeps the data set's files          |
|                  | (MovieLens); replaces the run's `dataset.path` on this node       |
| privacy-floor, answer-gram, send-sparse, min-noise-multiplier, secagg-min-threshold  |
|                  | optional: this node's own privacy floor (privacy_floor.py); the run      |
|                  | config, which the server writes, never lowers it                 |
"""

from __future__ import annotations

import json
import logging
import sys
import time
from functools import lru_cache
from pathlib import Path

from flwr.app import Context

from ..config import resolve_device
from ..data import ClientData, Federation, federation_for
from ..errors import ConfigError, FedMTLError
from ..runfiles import write_json

log = logging.getLogger("fedmtl")


class RoundStopped(FedMTLError):
    """The deployed run stopped before its last round (the message says why)."""

NODE_KEYS = ("partition-id", "num-partitions", "split-path", "dataset-path", "privacy-floor", "answer-gram",
             "send-sparse", "min-noise-multiplier", "secagg-min-threshold")


def _node_int(context: Context, key: str) -> int | None:
    if key not in context.node_config:
        return None
    value = context.node_config[key]
    try:
        if isinstance(value, bool):
            raise ValueError
        return int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"node-config {key}={value!r}: expected an integer") from None


def node_partition(context: Context, cfg: dict) -> int:
    """This node's partition id, checked against the run's number of clients."""
    pid = _node_int(context, "partition-id")
    if pid is None:
        raise ConfigError("node-config partition-id: missing; start the SuperNode with "
                          "--node-config 'partition-id=K num-partitions=N'")
    n = cfg["num_clients"]
    parts = _node_int(context, "num-partitions")
    if parts is not None and parts != n:
        raise ConfigError(f"node-config num-partitions={parts}: the run has num_clients={n} "
                          f"(set num_clients={parts} in the run's overrides, or restart the node)")
    if not 0 <= pid < n:
        raise ConfigError(f"node-config partition-id={pid}: the run has num_clients={n}, so 0..{n - 1}")
    return pid


def node_cfg(cfg: dict, context: Context) -> dict:
    """The run's config as this node reads its data: its local data set path."""
    if not context.node_config.get("dataset-path"):
        return cfg
    return dict(cfg, dataset=dict(cfg["dataset"], path=str(context.node_config["dataset-path"])))


@lru_cache(maxsize=2)
def _own_federation(dataset_key: str, path: str, seed: int) -> Federation:
    from ..data import load_dataset, split as split_mod

    dataset = load_dataset(json.loads(dataset_key))
    # the node's own files hold exactly its users: a federation of one client
    return Federation(dataset, split_mod.read(path, dataset, keep_unseen_items=True), 1, seed)


def node_data(cfg: dict, context: Context) -> tuple[int, ClientData]:
    """(partition id, this node's data). With a bound config (simulation) every client
    shares one federation; a deployed node reads its partition, or its own files."""
    pid = node_partition(context, cfg)
    local = node_cfg(cfg, context)
    device = resolve_device(cfg)
    if not context.node_config.get("split-path"):
        return pid, federation_for(local).partition_data(pid).to(device)
    path = Path(str(context.node_config["split-path"])).expanduser()
    if not (path / "train.tsv").is_file():
        raise ConfigError(f"node-config split-path={path}: no train.tsv there "
                          "(write one with python -m fedmtl.deploy.export)")
    fed = _own_federation(json.dumps(local["dataset"], sort_keys=True), str(path.resolve()), local["seed"])
    return pid, fed.partition_data(0).to(device)


def run_dir(context: Context) -> Path:
    """The deployed run's folder: `output-dir` from the run config, or
    outputs/deployed/<date>/<time>-run<id> under the ServerApp's working directory."""
    given = str(context.run_config.get("output-dir", "") or "")
    if given:
        return Path(given).expanduser()
    return Path("outputs") / "deployed" / time.strftime("%Y-%m-%d") / f"{time.strftime('%H-%M-%S')}-run{context.run_id}"


def start_run(context: Context, cfg: dict) -> Path:
    """Create the run folder and write the resolved config, as `simulate` does."""
    out_dir = run_dir(context).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "config.json", dict(cfg, output_dir=str(out_dir), engine="deployment",
                                             run_id=int(context.run_id)))
    return out_dir


def finish_run(out_dir: Path, cfg: dict, summary: dict, t0: float, error: str | None = None) -> None:
    """summary.json like a simulation's; a stopped run says why (its finished rounds
    are already in metrics.jsonl)."""
    out = {"mode": cfg["mode"], "tasks": cfg["tasks"], "dataset": cfg["dataset"]["name"],
           "num_clients": cfg["num_clients"], "engine": "deployment",
           "wall_seconds": round(time.time() - t0, 2), **summary}
    if error is not None:
        out["stopped"] = error
    write_json(out_dir / "summary.json", out)


def rounds_done(out_dir: Path) -> int:
    path = out_dir / "metrics.jsonl"
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.exists() else 0


def serve(grid, context: Context, run_rounds) -> dict:
    """The ServerApp's body in a deployed run: the config from the run config's
    overrides, run folder, rounds, summary. A bad override, or a run that cannot go on
    (a node failed under on_client_failure=stop, too few nodes left), ends with one
    logged line (and, once the run folder exists, a summary.json that says why)."""
    from .client_state import config_from_context

    if not log.handlers:  # the ServerApp process mirrors stdout/stderr into `flwr log`
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(levelname)s fedmtl: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
    try:
        cfg = config_from_context(context, None)
    except FedMTLError as e:
        log.error("fedmtl: error: %s (run config overrides=%r)", e, context.run_config.get("overrides", ""))
        raise RoundStopped(f"run config: {e}") from None
    meta_path = str(context.run_config.get("federation-meta", "") or "")
    if meta_path:  # the SuperLink's machine needs no data set: the metadata file stands for it
        from ..data import use_federation_meta
        try:
            use_federation_meta(cfg, Path(meta_path).expanduser())
        except FedMTLError as e:
            log.error("fedmtl: error: %s", e)
            raise RoundStopped(f"run config: {e}") from None
    out_dir = start_run(context, cfg)
    log.info("fedmtl deployed run %s -> %s", context.run_id, out_dir)
    t0 = time.time()
    try:
        summary = run_rounds(grid, cfg, out_dir)
    except FedMTLError as e:
        done = rounds_done(out_dir)
        finish_run(out_dir, cfg, {"rounds": done}, t0, error=str(e))
        log.error("fedmtl: error: %s (%d finished round(s) in %s)", e, done, out_dir)
        raise RoundStopped(f"{e} ({done} finished round(s) in {out_dir})") from None
    finish_run(out_dir, cfg, summary, t0)
    log.info("fedmtl deployed run %s finished: %d rounds -> %s", context.run_id, summary["rounds"], out_dir)
    return summary
