"""Where a cohort round goes: seconds per phase of the training rounds, and what an evaluation adds.

    python benchmarks/round_phases.py --ml-path DIR/ml-100k [--rounds 5] [--extra KEY=VALUE ...]
    python benchmarks/round_phases.py --ml1m-path DIR/ml-1m [--rounds 3]

Runs the default MovieLens recipe (experiment=ml100k_federated; with --ml1m-path on the
ml-1m files, one client per user) on `backend=cohort` in this process, evaluating only after
the last round, with a wall-clock timer around each phase of the engine and the server:

- batched maths: the chunks' padded forward, backward and optimiser steps (`_train_chunk`);
- encoding: each client's upload (int8 with its own rounding stream), metrics and state (`_finish`);
- row sets and permutations: each client's rows, offsets and epoch orders (`prepare`);
- stacking: the chunks' [clients, rows, ...] tensors (`Chunk`);
- replies: the Flower reply messages and stored states (the rest of `_train_batch`);
- screening: the server's checks of every reply (`screen_train`);
- the rest of the round: aggregation, the strategy, the run folder (round seconds minus the above).

A last line gives the time Python's cyclic garbage collector took within those rounds (it
overlaps the phases: a collection runs wherever an allocation sets it off).

Per phase: mean seconds per training round (the first round, with the warm-up and the item
Gram, left out), then the last round's seconds, which also evaluates.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # fedmtl from this checkout, installed or not

PHASES = [("batched maths", "training", "_train_chunk"), ("encoding", "training", "_finish"),
          ("row sets and permutations", "training", "prepare"), ("stacking", "training", "Chunk"),
          ("replies", "engine", "_train_batch"), ("screening", "server", "screen_train")]


def timed(owner, name: str, sink: collections.Counter, key: str):
    """Replace owner.name by the same callable that adds its wall time to sink[key]."""
    real = getattr(owner, name)

    def wrapper(*a, **k):
        t0 = time.perf_counter()
        try:
            return real(*a, **k)
        finally:
            sink[key] += time.perf_counter() - t0

    setattr(owner, name, wrapper)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ml-path", help="a MovieLens-100k folder (GroupLens layout)")
    ap.add_argument("--ml1m-path", help="an ml-1m folder (`::` layout; benchmarks/speed.py write_ml1m_shape makes one)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--extra", nargs="*", default=[], help="more overrides (e.g. backend.threads=2)")
    args = ap.parse_args()
    if bool(args.ml_path) == bool(args.ml1m_path):
        ap.error("give one of --ml-path, --ml1m-path")
    if args.rounds < 2:
        ap.error("--rounds: at least 2 (the first round is left out)")

    import torch

    import fedmtl.cohort.training as training
    import fedmtl.engine.cohort as engine
    import fedmtl.federation.server_app as server_app
    from fedmtl.config import compose
    from fedmtl.simulate import run

    per_round: list[collections.Counter] = []
    sink: collections.Counter = collections.Counter()
    for _, where, name in PHASES:
        owner = {"training": training, "engine": engine.CohortGrid, "server": server_app}[where]
        timed(owner, name, sink, name)
    real_train_round = server_app.train_round

    def train_round(*a, **k):  # one Counter per round
        sink.clear()
        try:
            return real_train_round(*a, **k)
        finally:
            per_round.append(collections.Counter(sink))

    server_app.train_round = train_round
    started = [0.0]

    def gc_timer(phase, info):  # the collector's time, into the round's Counter
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            sink["gc"] += time.perf_counter() - started[0]

    gc.callbacks.append(gc_timer)
    data = (["dataset.path=" + args.ml_path] if args.ml_path else
            ["dataset=movielens1m", "dataset.path=" + args.ml1m_path, "num_clients=6040"])
    overrides = ["experiment=ml100k_federated", *data, f"num_rounds={args.rounds}", f"eval_every={args.rounds}",
                 "save_model=false", "backend=cohort", *args.extra]
    out = Path(tempfile.mkdtemp(prefix="fedmtl-phases-"))
    print(f"# cohort round phases: torch {torch.__version__}, {torch.get_num_threads()} threads at start; "
          f"overrides: {' '.join(overrides)}", flush=True)
    run(compose(overrides), out)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    secs = [r["seconds"] for r in rows]
    train = list(range(1, len(rows) - 1))  # training-only rounds after the first
    clients = rows[-1]["sampled"]
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731

    def phase(c: collections.Counter, name: str) -> float:
        if name == "_train_batch":  # the replies: what _train_batch adds around the training
            return c["_train_batch"] - sum(c[n] for _, w, n in PHASES if w == "training")
        return c[name]

    print(f"\n{clients} clients; {len(train)} training rounds timed (rounds 2-{len(rows) - 1}), "
          f"round {len(rows)} also evaluates\n")
    print("| phase | s / training round | ms / client-round | last round (s) |")
    print("| --- | --- | --- | --- |")
    for label, _, name in PHASES:
        s = mean([phase(per_round[k], name) for k in train])
        print(f"| {label} | {s:.3f} | {1000 * s / clients:.3f} | {phase(per_round[-1], name):.3f} |")
    rest = mean([secs[k] - sum(phase(per_round[k], n) for _, _, n in PHASES) for k in train])
    last_rest = secs[-1] - sum(phase(per_round[-1], n) for _, _, n in PHASES)
    print(f"| the rest of the round (aggregation, strategy, run folder; last round: the evaluation) | {rest:.3f} | "
          f"{1000 * rest / clients:.3f} | {last_rest:.3f} |")
    print(f"| whole round | {mean([secs[k] for k in train]):.3f} | {1000 * mean([secs[k] for k in train]) / clients:.3f} "
          f"| {secs[-1]:.3f} |")
    gc_s = mean([per_round[k]["gc"] for k in train])
    print(f"\ncyclic garbage collection within those rounds: {gc_s:.3f} s a training round "
          f"({1000 * gc_s / clients:.3f} ms / client-round), {per_round[-1]['gc']:.3f} s in the last round")


if __name__ == "__main__":
    main()
