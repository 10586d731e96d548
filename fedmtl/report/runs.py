"""Reading run folders: one Run per folder (its overrides, config, metrics rows, summary and
status: complete, failed, incomplete), plus a Run marked missing for every job a sweep's
multirun.yaml lists that has no folder."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..runfiles import ERROR_FILE, read_jsonl

RUN_FILES = ("config.json", "metrics.jsonl", "summary.json", ERROR_FILE)


@dataclass
class Run:
    path: Path
    name: str
    params: dict = field(default_factory=dict)  # override key -> value (strings)
    seed: str | None = None
    config: dict | None = None
    summary: dict | None = None
    rows: list = field(default_factory=list)
    status: str = "incomplete"  # complete | failed | incomplete | missing
    reason: str = ""

    def describe(self, keys) -> str:
        """The run's name and what sets it apart: `3 (weighting=dwa seed=1)`."""
        label = " ".join(f"{k}={v}" for k, v in self.params.items() if k in keys)
        label = (label + (f" seed={self.seed}" if self.seed is not None else "")).strip()
        return f"{self.name} ({label})" if label else self.name

    def curve(self, metric: str) -> dict[int, float]:
        out = {}
        for row in self.rows:
            v = row.get("test", {}).get(metric)
            if isinstance(v, (int, float)) and "round" in row:
                out[int(row["round"])] = float(v)
        return out


def _split_override(ov: str) -> tuple[str, str]:
    key, _, value = ov.partition("=")
    return key.lstrip("+~"), value


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, bool)) or v is None else str(v)
    return out


def _read_overrides(path: Path) -> list[str] | None:
    f = path / ".hydra" / "overrides.yaml"
    if not f.exists():
        return None
    from omegaconf import OmegaConf
    try:
        return [str(x) for x in OmegaConf.to_container(OmegaConf.load(f))]
    except Exception:
        return None


def _final_round(cfg: dict) -> int:
    """The round (epoch, for the baselines) whose metrics.jsonl line ends a finished run."""
    if cfg["mode"] == "federated":
        return int(cfg["num_rounds"])
    from ..baselines import epochs_of
    return int(epochs_of(cfg))


def load_run(path: Path, root: Path) -> Run:
    name = str(path.relative_to(root)) if path != root else path.name
    run = Run(path=path, name=name)
    overrides = _read_overrides(path)
    try:
        if (path / "config.json").exists():
            run.config = json.loads((path / "config.json").read_text())
        if (path / "summary.json").exists():
            run.summary = json.loads((path / "summary.json").read_text())
    except (OSError, json.JSONDecodeError) as e:
        run.reason = f"unreadable: {e}"
    if overrides is not None:
        run.params = dict(_split_override(o) for o in overrides if not o.startswith("hydra."))
    elif run.config is not None:
        run.params = _flatten(run.config)
        if run.params.get("split.seed") == run.params.get("seed"):
            run.params.pop("split.seed", None)  # derived from seed
    run.seed = run.params.pop("seed", None)
    if run.seed is None and run.config is not None:
        run.seed = str(run.config.get("seed"))
    run.rows = read_jsonl(path / "metrics.jsonl")
    err = path / ERROR_FILE
    if err.exists():
        run.status = "failed"
        try:
            run.reason = json.loads(err.read_text()).get("error", "see error.json")
        except (OSError, json.JSONDecodeError):
            run.reason = "see error.json"
        return run
    if run.reason:
        return run
    if run.config is None:
        run.reason = "started, but no config.json (stopped before the run began)"
        return run
    try:
        final = _final_round(run.config)
    except (KeyError, TypeError, ValueError):
        final = None
    last = max((int(r["round"]) for r in run.rows if "round" in r), default=0)
    tested = {int(r["round"]) for r in run.rows if "test" in r and "round" in r}
    gaps = []
    if final is not None and last < final:
        gaps.append(f"metrics.jsonl ends at round {last} (of {final})" if run.rows else
                    "no complete line in metrics.jsonl" if (path / "metrics.jsonl").exists() else "no metrics.jsonl")
    elif final is not None and final not in tested:
        gaps.append(f"round {final} has no test metrics")
    if run.summary is None:
        gaps.append("no summary.json")
    if gaps:
        run.reason = ", ".join(gaps)
    else:
        run.status = "complete"
    return run


def find_run_dirs(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        d = Path(dirpath)
        dirnames[:] = sorted(n for n in dirnames if not n.startswith(".") and n not in ("plots", "split"))
        if any(f in filenames for f in RUN_FILES) or (d / ".hydra" / "overrides.yaml").exists():
            found.append(d)
            dirnames[:] = []  # a run's own sub-folders are not runs
    return sorted(found, key=lambda p: [int(x) if x.isdigit() else x for x in p.relative_to(root).parts])


def expected_jobs(sweep_dir: Path) -> list[tuple[int, list[str]]] | None:
    """The jobs a sweep was to run, from its multirun.yaml, as Hydra's basic sweeper lists
    them: (job number, its overrides). None if the file cannot be read this way."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(sweep_dir / "multirun.yaml")
        task = [str(x) for x in OmegaConf.to_container(cfg.hydra.overrides.task, resolve=False)]
        params = cfg.hydra.sweeper.get("params")
        params = {} if params is None else OmegaConf.to_container(params, resolve=False)
        args = [f"{k}={v}" for k, v in params.items()] + task
        batches = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    except Exception:
        return None
    return list(enumerate(job for batch in batches for job in batch))


def collect(root: Path) -> list[Run]:
    root = Path(root)
    runs = [load_run(d, root) for d in find_run_dirs(root)]
    for mr in sorted(root.rglob("multirun.yaml")):
        sweep = mr.parent
        jobs = expected_jobs(sweep)
        if jobs is None:
            continue
        in_sweep = [r for r in runs if sweep == r.path or sweep in r.path.parents]
        seen = {tuple(sorted(o for o in (_read_overrides(r.path) or []) if not o.startswith("hydra.")))
                for r in in_sweep}
        names = {r.path.name for r in in_sweep if _read_overrides(r.path) is None}
        for num, job in jobs:
            if tuple(sorted(job)) in seen or str(num) in names:
                continue
            rel = sweep.relative_to(root) / str(num) if sweep != root else Path(str(num))
            params = dict(_split_override(o) for o in job)
            runs.append(Run(path=sweep / str(num), name=str(rel), params=params, seed=params.pop("seed", None),
                            status="missing", reason="never started (no run folder)"))
    return sorted(runs, key=lambda r: [int(x) if x.isdigit() else x for x in Path(r.name).parts])
