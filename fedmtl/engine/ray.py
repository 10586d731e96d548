"""Flower's simulation engine (Ray): many cores, fractional GPUs, or a Ray cluster.

To use an existing cluster, start it (`ray start --head` on one machine,
`ray start --address HEAD:6379` on the others) and run with
`backend=ray backend.address=auto` on the head node.
"""

from __future__ import annotations

import logging
import os


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


def run_ray(server_app, client_app, num_nodes: int, bcfg: dict, verbose: bool) -> None:
    if not verbose:
        _quiet()  # before the import: importing Flower's simulation loads alembic, which logs
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
