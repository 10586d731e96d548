"""Flower's simulation engine (Ray): many cores, fractional GPUs, or a Ray cluster.

To use an existing cluster, start it (`ray start --head` on one machine,
`ray start --address HEAD:6379` on the others) and run with
`backend=ray backend.address=auto` on the head node.
"""

from __future__ import annotations

import logging
import os


def run_ray(server_app, client_app, num_nodes: int, bcfg: dict, verbose: bool) -> None:
    from flwr.simulation import run_simulation

    init_args: dict = {"include_dashboard": False}
    if not verbose:
        init_args.update({"logging_level": logging.ERROR, "log_to_driver": False})
    if bcfg.get("address"):
        init_args["address"] = bcfg["address"]
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    backend_config = {
        "client_resources": {"num_cpus": bcfg.get("num_cpus_per_client", 1),
                             "num_gpus": bcfg.get("num_gpus_per_client", 0.0)},
        "init_args": init_args,
    }
    run_simulation(server_app=server_app, client_app=client_app, num_supernodes=num_nodes,
                   backend_config=backend_config, verbose_logging=verbose)
