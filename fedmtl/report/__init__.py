"""`python -m fedmtl.report PATH`: one summary of every run folder under PATH.

Written into PATH (or `--out DIR`), and at the end of every sweep by fedmtl/sweep.py:

- summary.csv: one row per configuration (the runs' overrides, seed left out): how many
  runs finished, their seeds, and the mean and standard deviation over those runs of every
  final per-task test metric (`<metric>_mean`, `<metric>_std`; the sample std, empty for a
  single run);
- summary.md: the same table for the headline metrics, the runs that are not in it
  (failed, incomplete, never started) named one by one, and every run's status;
- plots/<metric>.png: each test metric against the round (the epoch for the baselines),
  one line per configuration (mean over its runs, band = one std).

A run is a folder holding any of config.json, metrics.jsonl, summary.json, error.json or
.hydra/overrides.yaml. It is complete when summary.json exists and metrics.jsonl reaches
the run's last round; otherwise it is failed (error.json) or incomplete. A sweep folder's
multirun.yaml lists the jobs the sweep was to run; a job with no folder is reported missing.

The modules, in the order a report is made:

- runs.py: reading run folders (and a sweep's multirun.yaml) into Run records;
- groups.py: runs grouped into configurations, their final metrics, the Report the writers share;
- summary.py: summary.csv, summary.md and `write_report`, which makes the whole report;
- plots.py: plots/<metric>.png;
- selection.py: `--select`, model selection over (configuration, round) on validation runs;
- cli.py: the command line (`__main__.py` runs it).

This __init__ imports nothing: `import fedmtl.report.X` loads only X and what X needs.
"""
