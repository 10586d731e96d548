"""The command line: `python -m fedmtl.report PATH [--out DIR] [--no-plots] [--select [--by M1,M2]]`."""

from __future__ import annotations

import argparse
import sys

from ..errors import FedMTLError, print_error
from .groups import is_grid, is_tail
from .selection import SELECT_METRICS, on_validation, select, selection_table
from .summary import write_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m fedmtl.report",
                                 description="Summary table (Markdown, CSV) and plots of every run folder under PATH.")
    ap.add_argument("path", help="a sweep folder (multirun/...), a folder of run folders, or one run folder")
    ap.add_argument("--out", default=None, help="where to write summary.md, summary.csv, plots/ (default: PATH)")
    ap.add_argument("--no-plots", action="store_true", help="tables only")
    ap.add_argument("--select", action="store_true",
                    help="rank every (configuration, round) by its mean rank over RMSE, AUC, HR@10 and NDCG@10 "
                         "(model selection and early stopping; run it on split.validation=true runs)")
    ap.add_argument("--by", default=None, metavar="M1,M2",
                    help=f"the metrics --select ranks by (default: those of {','.join(SELECT_METRICS)} the runs have)")
    args = ap.parse_args(argv)
    try:
        rep = write_report(args.path, args.out, plots=not args.no_plots)
    except FedMTLError as e:
        return print_error(e)
    print(rep.headline_table())
    bad = [r for r in rep.runs if r.status != "complete"]
    for r in bad:
        print(f"{r.status}: {r.describe(rep.keys)}: {r.reason}")
    print(f"\n{len(rep.runs) - len(bad)} of {len(rep.runs)} runs complete -> {rep.out_dir / 'summary.md'}, "
          f"{rep.out_dir / 'summary.csv'}, {len(rep.plots)} plots in {rep.out_dir / 'plots'}")
    if args.select:
        if not on_validation(rep):
            print("fedmtl: warning: some runs were scored on TEST (split.validation=false); select on "
                  "validation runs only", file=sys.stderr)
        by = SELECT_METRICS if args.by is None else [m.strip() for m in args.by.split(",") if m.strip()]
        unknown = [] if args.by is None else [m for m in by if m not in rep.metrics]
        if unknown or not by:
            print(f"fedmtl: error: --by {args.by}: {unknown[0] if unknown else 'no metric'} is not a metric of these "
                  f"runs (they have: {', '.join(m for m in rep.metrics if not is_grid(m) and not is_tail(m))})",
                  file=sys.stderr)
            return 2
        cands = select(rep, by)
        print("\nselection (validation metric, its rank; best mean rank first):")
        print(selection_table(cands))
        if cands:
            best = cands[0]
            print(f"\nselected: {best['configuration']} at round {best['round']}")
    return 0
