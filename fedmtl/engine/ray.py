"""Flower's simulation engine (Ray): many cores, fractional GPUs, or a Ray cluster.

To use an existing cluster, start it (`ray start --head` on one machine,
`ray start --address HEAD:6379` on the others) and run with
`backend=ray backend.address=auto` on the head node.
"""

from __future__ import annotations

import logging
import math
import os
import time


class _DropDeprecation(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "DEPRECATED FEATURE" not in str(record.msg)


def _quiet() -> None:
    """Without `verbose`, no start-up chatter: the run_simulation deprecation notice (fedmtl
    knows; `flwr run` is the deployment path), the SQL migration logs of Flower's state
    store, Ray's accelerator tip. Warnings that concern the run itself still show."""
    import warnings

    logging.getLogger("alembic").setLevel(logging.WARNING)
    flwr_log = logging.getLogger("flwr")
    if not any(isinstance(f, _DropDeprecation) for f in flwr_log.filters):
        flwr_log.addFilter(_DropDeprecation())
    warnings.filterwarnings("ignore", message=".*RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO.*")


def _local_cpus() -> float:
    """The CPUs a local Ray would detect (cgroup limits included)."""
    try:
        from ray._private.utils import get_num_cpus
        return float(get_num_cpus())
    except Exception:  # noqa: BLE001  (a private helper; the plain count will do)
        return float(os.cpu_count() or 1)


def pool_room(init_args: dict, bcfg: dict, extra_actors: int) -> None:
    """Room in Flower's actor pool (one actor per `num_cpus_per_client` of Ray's CPUs) for
    `extra_actors` clients that only stall (faults.straggler_rate): a local Ray gets that many
    more logical CPUs, so the stalled ones never take a slot a punctual client needs."""
    if extra_actors <= 0:
        return
    log = logging.getLogger("fedmtl")
    if bcfg.get("address") or bcfg.get("num_gpus_per_client", 0.0) > 0:
        log.warning("faults.straggler_rate on %s: the actor pool is not enlarged for the %d clients that may "
                    "stall at once; clients queued behind them may be counted late too",
                    "an existing Ray cluster" if bcfg.get("address") else "GPU clients", extra_actors)
        return
    per_client = float(bcfg.get("num_cpus_per_client", 1))
    cpus = _local_cpus()
    init_args["num_cpus"] = math.ceil(cpus + extra_actors * per_client - 1e-9)  # Ray takes whole CPUs
    log.info("ray: %d actors for %g CPUs, plus %d for clients that stall (faults.straggler_rate)",
             int(cpus // per_client), cpus, extra_actors)


def warm_up(grid, bcfg: dict, limit: float = 120.0) -> None:
    """Before round 1, one cheap query per actor of Flower's pool, so that `round_timeout`
    times rounds, not Ray's start-up: the ServerApp starts while Flower's engine is still
    starting Ray and its actors, and each actor imports the client code and builds its data
    on its first message (10-20 s on 2 shared cores), which would all count against round 1's
    deadline. The pool's worker threads take one message each, so P queries reach P distinct
    actors. Waits at most `limit` seconds, then goes on."""
    import ray
    from flwr.app import Message, RecordDict
    from flwr.common import MessageType
    from flwr.simulation.ray_transport.ray_actor import pool_size_from_resources

    t0 = time.time()
    while not ray.is_initialized() and time.time() - t0 < limit:
        time.sleep(0.1)
    if not ray.is_initialized():
        return
    actors = pool_size_from_resources({"num_cpus": bcfg.get("num_cpus_per_client", 1),
                                       "num_gpus": bcfg.get("num_gpus_per_client", 0.0)})
    nodes = sorted(grid.get_node_ids())
    msgs = [Message(RecordDict(), dst_node_id=nodes[i % len(nodes)], message_type=MessageType.QUERY)
            for i in range(actors)]
    replies = list(grid.send_and_receive(msgs, timeout=max(limit - (time.time() - t0), 1.0)))
    ready = sum(not r.has_error() for r in replies)
    logging.getLogger("fedmtl").log(logging.INFO if ready == actors else logging.WARNING,
                                    "ray: %d of %d actors ready after %.1fs", ready, actors, time.time() - t0)


def run_ray(server_app, client_app, num_nodes: int, bcfg: dict, verbose: bool, extra_actors: int = 0) -> None:
    if not verbose:
        _quiet()  # before the import: importing Flower's simulation loads alembic, which logs
    from flwr.simulation import run_simulation

    init_args: dict = {"include_dashboard": False}
    if not verbose:
        init_args.update({"logging_level": logging.ERROR, "log_to_driver": False})
    if bcfg.get("address"):
        init_args["address"] = bcfg["address"]
    pool_room(init_args, bcfg, extra_actors)
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    backend_config = {
        "client_resources": {"num_cpus": bcfg.get("num_cpus_per_client", 1),
                             "num_gpus": bcfg.get("num_gpus_per_client", 0.0)},
        "init_args": init_args,
    }
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_nodes,
                   backend_config=backend_config, verbose_logging=verbose)
