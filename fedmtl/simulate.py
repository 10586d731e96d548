"""`python -m fedmtl.simulate [overrides]`: one federated multi-task run (or a baseline).

Results land in Hydra's run folder: config.json (resolved), split/ (train.tsv,
test.tsv), metrics.jsonl (one line per round), summary.json, model_shared.pt.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from .config_types import RunConfig
from .config import validate
from .errors import FedMTLError, print_error
from .runfiles import ERROR_FILE, write_json
from .sweep import check_first_job, in_sweep, record_failure, write_failure

log = logging.getLogger("fedmtl")

def table_rows(tasks) -> list[tuple[str, str, str]]:
    """(task, metric key, label) of the final table: the pair tasks (regression, binary),
    then the ranking ones, each in the order `tasks` names them."""
    from .tasks import get

    order = [t for t in tasks if get(t).pairwise] + [t for t in tasks if not get(t).pairwise]
    return [(t, key, label) for t in order for key, label in get(t).rows()]


def metrics_table(metrics: dict, tasks) -> str:
    lines = ["| task | metric | value |", "| --- | --- | --- |"]
    for task, key, label in table_rows(tasks):
        if key in metrics and metrics[key] is not None:
            lines.append(f"| {task} | {label} | {metrics[key]:.4f} |")
    lines += grid_lines(metrics)
    return "\n".join(lines)


def grid_lines(metrics: dict) -> list[str]:
    """The click_mix grid's best blends by NDCG@10 (the table names them; summary.json holds them all)."""
    from .itemitem import GRID_PREFIX

    key = "/click.ndcg@10"
    blends = sorted(((v, k[:-len(key)]) for k, v in metrics.items() if k.startswith(GRID_PREFIX) and k.endswith(key)),
                    reverse=True)
    if not blends:
        return []
    return [f"| click | NDCG@10, blend {name[len(GRID_PREFIX):]} (click_mix grid, best {i + 1} of {len(blends)}) "
            f"| {v:.4f} |" for i, (v, name) in enumerate(blends[:3])]


def quiet_frameworks(verbose: bool) -> None:
    level = logging.INFO if verbose else logging.WARNING
    flwr_log = logging.getLogger("flwr")
    flwr_log.setLevel(level)
    logging.getLogger("ray").setLevel(level)
    if logging.getLogger().handlers:  # Hydra's console and run-log handlers: each Flower line once, through them
        from flwr.common.logger import ConsoleHandler
        for handler in [h for h in flwr_log.handlers if isinstance(h, ConsoleHandler)]:
            flwr_log.removeHandler(handler)  # Flower's own console copy (it also propagates to the root)


def run(cfg: RunConfig, out_dir: str | Path) -> dict:
    """Run one validated config, writing every result into `out_dir`. Returns the summary."""
    from .data import federation_for, split as split_mod

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = dict(cfg, output_dir=str(out_dir.resolve()))
    quiet_frameworks(cfg["verbose"])
    (out_dir / ERROR_FILE).unlink(missing_ok=True)  # an earlier failure of this folder (resumed) is not this run's
    if not (cfg.get("resume") and (out_dir / "config.json").is_file()):  # a resumed run keeps its own
        write_json(out_dir / "config.json", cfg)
    t0 = time.time()
    from .tasks import configure as configure_tasks
    configure_tasks(cfg)  # the registry of this config (another may have been validated since)
    fed = federation_for(cfg)
    split_mod.write(fed.split, fed.dataset, out_dir / "split")
    if fed.holdout:
        from .data import holdout
        holdout.write(fed.holdout, fed.dataset, out_dir / "split")
    log.info("%s | %d clients | mode=%s | tasks=%s | split: %d train / %d test", fed.dataset.describe(),
             len(fed.clients), cfg["mode"], ",".join(cfg["tasks"]), len(fed.split.train), len(fed.split.test))
    if cfg["mode"] == "centralized":
        from .baselines import run_centralized
        result = run_centralized(cfg, fed, out_dir)
    elif cfg["mode"] == "local":
        from .baselines import run_local
        result = run_local(cfg, fed, out_dir)
    else:
        result = run_federated(cfg, len(fed.clients))
        if fed.holdout:  # transfer.new_users / new_items: cold-start evaluations
            from .transfer.evaluation import after_run
            result["transfer"] = after_run(cfg, fed, out_dir, result)
    if cfg["split"].get("name") == "leave_one_out":  # the test figures of the best validation round (data/loo.py)
        from .data.loo import reported
        from .runfiles import read_jsonl
        from .tasks import selection_key
        result.update(reported(read_jsonl(out_dir / "metrics.jsonl"), result["metrics"], selection_key(cfg["tasks"])))
    summary = {"mode": cfg["mode"], "tasks": cfg["tasks"], "dataset": fed.dataset.name,
               "num_clients": len(fed.clients), "wall_seconds": round(time.time() - t0, 2), **result}
    write_json(out_dir / "summary.json", summary)
    if summary.get("no_metrics"):  # every client's final evaluation failed: an error, not an empty table
        raise FedMTLError(summary["no_metrics"])
    return summary


def run_federated(cfg: RunConfig, num_clients: int) -> dict:
    from .federation.client_app import make_client_app
    from .federation.server_app import make_server_app

    quiet_frameworks(cfg["verbose"])  # again: importing Flower resets its logger
    sink: dict = {}
    server_app, client_app = make_server_app(cfg, sink), make_client_app(cfg)
    bcfg = cfg["backend"]
    backend = bcfg["name"]
    if backend in ("inprocess", "cohort"):  # client states in memory, or on disk in the run folder
        state = bcfg.get("state", "auto")
        on_disk = state == "disk" or (state == "auto" and num_clients >= bcfg.get("disk_from_clients", 5000))
        state_dir, workers = (cfg["output_dir"] if on_disk else None), bcfg.get("workers", 1)
    if backend == "inprocess":
        from .engine.inprocess import run_inprocess
        run_inprocess(server_app, client_app, num_clients, workers=workers, state_dir=state_dir)
    elif backend == "cohort":  # inprocess, with each round's training as one batch (engine/cohort.py)
        from .engine.cohort import run_cohort
        run_cohort(server_app, client_app, num_clients, cfg, state_dir=state_dir, workers=workers)
    else:
        from .engine.ray import run_ray
        from .federation.faults import ray_extra_actors
        run_ray(server_app, client_app, num_clients, cfg["backend"], cfg["verbose"],
                extra_actors=ray_extra_actors(cfg))
    if not sink:
        raise FedMTLError("the federated run ended without a result (see the log above)")
    return sink


@hydra.main(config_path="../conf", config_name="config", version_base=None)
def main(dcfg: DictConfig) -> dict | None:
    from hydra.core.hydra_config import HydraConfig

    out_dir = HydraConfig.get().runtime.output_dir
    try:
        cfg, out_dir = validated(OmegaConf.to_container(dcfg, resolve=True), out_dir)
        summary = run(cfg, out_dir)
    except FedMTLError as e:
        if in_sweep():  # one failing combination must not stop the sweep (fedmtl/sweep.py)
            return record_failure(out_dir, e)
        write_failure(out_dir, e)
        sys.exit(print_error(e))
    except KeyboardInterrupt:
        print(f"fedmtl: interrupted; finished rounds are in {out_dir} "
              f"(continue with: python -m fedmtl.simulate resume={out_dir})", file=sys.stderr)
        sys.exit(130)
    except Exception as e:
        if not in_sweep():
            write_failure(out_dir, e)
            raise
        return record_failure(out_dir, e)
    chosen = f", round {summary['selected_round']} by {summary['selected_by']}" if summary.get("selected_by") else ""
    print(f"\nfinal test metrics ({summary['mode']}, {summary['num_clients']} clients, "
          f"{summary['wall_seconds']}s{chosen}) -> {out_dir}")
    print(metrics_table(summary["metrics"], cfg["tasks"]))
    return summary


def validated(raw: dict, out_dir: str) -> tuple[dict, str | Path]:
    """The run's config, validated once, and its folder: Hydra's composition of this
    command, or, for `resume=`, the config.json of the run it continues (validated in its
    place; this command's other values are then ignored)."""
    if raw.get("resume"):
        from .federation.resume import resumed_config
        return resumed_config(raw, out_dir)
    return validate(raw), out_dir


def precheck(argv: list[str]) -> None:
    """Before Hydra starts: an unknown group option as one line and exit 2, and for a sweep,
    its first job composed so that what Hydra would reject in every job is one line before
    any folder exists. A single run is composed once, by Hydra (`cli` turns Hydra's own
    errors into one line)."""
    from .config import CONF_DIR, SIMULATIONS_DIR

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.lstrip("+~").startswith("hydra.")]
    try:
        for ov in overrides:
            key, value = ov.lstrip("+~").split("=", 1)
            group = CONF_DIR / key if any((CONF_DIR / key).glob("*.yaml")) else SIMULATIONS_DIR / key
            if group.is_dir():
                options = sorted(p.stem for p in group.glob("*.yaml"))
                for v in value.split(","):
                    if v and v not in options:
                        raise FedMTLError(f"{key}={v}: expected one of {options}")
        if any(a in ("-m", "--multirun") for a in argv):
            check_first_job(overrides)  # fedmtl/sweep.py
    except FedMTLError as e:
        sys.exit(print_error(e))


def cli(argv: list[str]) -> None:
    """`python -m fedmtl.simulate ARGV`: Hydra composes the config once; its errors (an
    unknown key, a malformed override, a bad interpolation) are one line and exit 2."""
    import os

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    precheck(argv)
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises its errors instead of printing them
    try:
        main()
    except (HydraException, OmegaConfBaseException) as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        sys.exit(print_error(" ".join(lines[:2])))


if __name__ == "__main__":
    cli(sys.argv[1:])
