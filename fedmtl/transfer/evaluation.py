"""The transfer evaluations of a finished federated run (new users cold-started per k against
scratch and popularity; new items against popularity and random), written to
transfer.json and transfer.md; and the same again with other transfer.* settings."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from ..config_types import RunConfig
from ..errors import FedMTLError
from ..metrics import combine
from ..model import saved
from ..runfiles import write_json
from .checks import validate_config
from .new_items import item_parts
from .new_users import cold_start, initial_arrays, reference_scores
from .references import Popularity, RandomScores
from .tables import tables

log = logging.getLogger("fedmtl")


def after_run(cfg: RunConfig, fed, out_dir: str | Path, result: dict, write: bool = True) -> dict:
    """The transfer evaluations of a finished federated run, written to transfer.json."""
    out_dir = Path(out_dir)
    tcfg = cfg["transfer"]
    tasks = cfg["tasks"]
    report: dict = {}
    seed = tcfg["seed"] if tcfg.get("seed") is not None else cfg["seed"]
    if len(fed.holdout.users):
        ks, kmax = sorted(set(tcfg["k"])), max(tcfg["k"])
        users = [(u, rows) for u, rows in fed.holdout.user_log.groupby("user", sort=True) if len(rows) > kmax]
        log.info("new users: %d held out, %d with more than %d interactions scored", len(fed.holdout.users),
                 len(users), kmax)
        if users:
            final = saved.load(out_dir, what="run folder").arrays
            pop = reference_scores(Popularity(fed.split.train, fed.meta["n_items"]), fed, tasks, users, kmax)
            report["new_users"] = {
                "users": len(users), "held_out": int(len(fed.holdout.users)), "k": ks,
                "head_prior": cfg["aggregate"] == "all", "epochs": tcfg["epochs"], "tune": tcfg["tune"],
                "transfer": cold_start(cfg, fed, final, ks, tcfg["epochs"], seed),
                "scratch": cold_start(cfg, fed, initial_arrays(cfg, fed.meta), ks, tcfg["epochs"], seed),
                "popularity": pop,
            }
    if len(fed.holdout.items):
        from ..train import evaluate
        data = fed.all_data()
        refs = {}
        for name, scorer in (("popularity", Popularity(fed.split.train, fed.meta["n_items"])),
                             ("random", RandomScores(fed.meta["n_items"], seed))):
            refs[name] = combine([item_parts(scorer, data, tasks, fed.holdout.items) | evaluate(scorer, data, tasks)])
        report["new_items"] = {"items": int(len(fed.holdout.items)), "model": result.get("metrics", {}), **refs}
    if report and write:
        write_json(out_dir / "transfer.json", report)
        (out_dir / "transfer.md").write_text(tables(report, tasks))
        log.info("transfer:\n%s", tables(report, tasks))
    return report


def reevaluate(run_dir: str | Path, overrides: list[str], name: str = "transfer") -> dict:
    """The transfer evaluations of a finished run again, with other `transfer.KEY=VALUE`
    (k, epochs, tune), into NAME.json / NAME.md; the held-out users and items stay the run's."""
    import yaml
    from ..data import federation_for

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").is_file() or not (run_dir / "summary.json").is_file():
        raise FedMTLError(f"{run_dir}: not a finished run folder (config.json and summary.json expected)")
    cfg = json.loads((run_dir / "config.json").read_text())
    for ov in overrides:
        key, eq, value = ov.partition("=")
        if not eq or not key.startswith("transfer.") or key.split(".", 1)[1] not in ("k", "epochs", "tune"):
            raise FedMTLError(f"{ov}: expected transfer.k=..., transfer.epochs=... or transfer.tune=...")
        cfg["transfer"][key.split(".", 1)[1]] = yaml.safe_load(value)
    validate_config(cfg)
    fed = federation_for(cfg)
    report = after_run(cfg, fed, run_dir, json.loads((run_dir / "summary.json").read_text()), write=False)
    write_json(run_dir / f"{name}.json", report)
    (run_dir / f"{name}.md").write_text(tables(report, cfg["tasks"]))
    return report
