"""Hydra sweeps (`python -m fedmtl.simulate -m ...`): a failing run is recorded, not fatal,
and the sweep ends with the report of fedmtl/report/ (report.summary.write_report).

- `record_failure`: in a sweep, a run that fails writes `error.json` into its own run folder
  (`write_failure`, which a single run's failure calls too) and returns, so Hydra goes on with the other combinations (Hydra's basic sweeper would
  otherwise stop at the end of the batch and skip the end-of-sweep report).
- `SweepReport`: the Hydra callback registered in conf/config.yaml (`hydra.callbacks.report`);
  at the end of a sweep it writes summary.md, summary.csv and plots/ into the sweep folder,
  and exits with status 1 when a run failed.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback

from .errors import FedMTLError
from .runfiles import ERROR_FILE, write_json


def in_sweep() -> bool:
    """True inside a job of a Hydra multirun."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def write_failure(out_dir: str | Path, exc: BaseException) -> str:
    """Write `error.json` (the one-line error and, for an unexpected one, its traceback) into
    the run folder, where `python -m fedmtl.report` shows it; returns the line. A single run
    writes it too, so a run started in the background says in its folder why it stopped."""
    line = str(exc) if isinstance(exc, FedMTLError) else f"{type(exc).__name__}: {exc}"
    record = {"error": line, "type": type(exc).__name__}
    if not isinstance(exc, FedMTLError):
        record["traceback"] = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        write_json(Path(out_dir) / ERROR_FILE, record)
    except OSError:  # a folder that cannot be written: the line on stderr is what is left
        pass
    return line


def record_failure(out_dir: str | Path, exc: BaseException) -> None:
    """In a sweep: `write_failure`, and say so in one line on stderr. Returns None, Hydra's job result."""
    line = write_failure(out_dir, exc)
    print(f"fedmtl: run {out_dir} failed: {line} (the sweep goes on)", file=sys.stderr)
    return None


def check_first_job(overrides: list[str]) -> None:
    """Before a sweep starts: compose its first job, so that what Hydra would reject in every
    job (an unknown key, a malformed override) is one ConfigError line. Values that only
    `validate` rejects are left to each run, which then fails alone."""
    from hydra import compose, initialize_config_dir
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from .config import CONF_DIR
    from .errors import ConfigError

    try:
        first = BasicSweeper.split_arguments(OverridesParser.create().parse_overrides(overrides), None)[0][0]
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
            compose(config_name="config", overrides=first)
    except HydraException as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        raise ConfigError(" ".join(lines[:2])) from None


class SweepReport(Callback):
    """Writes the sweep's report when the sweep ends; exit status 1 if a run failed."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.sweep_dir: Path | None = None

    def on_multirun_start(self, config, **kwargs) -> None:
        self.sweep_dir = Path(config.hydra.sweep.dir)

    def on_multirun_end(self, config, **kwargs) -> None:
        if not self.enabled:
            return
        from .report.summary import write_report

        sweep_dir = self.sweep_dir or Path(config.hydra.sweep.dir)
        try:
            rep = write_report(sweep_dir)
        except Exception as e:  # the runs are safe on disk; the report can be redone on demand
            print(f"fedmtl: the sweep report failed ({type(e).__name__}: {e}); "
                  f"redo it with: python -m fedmtl.report {sweep_dir}", file=sys.stderr)
            sys.exit(1)
        print(f"\nsweep summary ({len(rep.groups)} configurations, {len(rep.runs)} runs) -> "
              f"{rep.out_dir / 'summary.md'}")
        print(rep.headline_table())
        bad = [r for r in rep.runs if r.status != "complete"]
        if bad:
            named = ", ".join(f"{r.describe(rep.keys)} {r.status}" for r in bad[:8]) + (", ..." if len(bad) > 8 else "")
            print(f"fedmtl: {len(bad)} of {len(rep.runs)} runs did not finish: {named}; "
                  f"the reasons are in {rep.out_dir / 'summary.md'}", file=sys.stderr)
            sys.exit(1)
