"""What the per-round checkpoint costs: seconds to write it against the round's
seconds, and its size on disk.

    python benchmarks/checkpoint.py [--clients 50 1000] [--rounds 3] [--state memory|disk]

Workload: the default synthetic data set (at least one user per client), full
participation, the default model and strategy, CPU. Prints one line per size.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fedmtl.config import compose  # noqa: E402
from fedmtl.federation import resume as ck  # noqa: E402
from fedmtl.simulate import run  # noqa: E402


def measure(clients: int, rounds: int, state: str) -> str:
    times: list[float] = []
    real = ck.Checkpointer.save

    def timed(self, *args, **kwargs):
        t = time.perf_counter()
        real(self, *args, **kwargs)
        times.append(time.perf_counter() - t)

    ck.Checkpointer.save = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp)
            run(compose([f"num_clients={clients}", f"num_rounds={rounds}", "device=cpu", "save_model=false",
                         f"dataset.n_users={max(500, clients)}", f"backend.state={state}"]), out)
            size = sum(p.stat().st_size for p in (out / "checkpoint").rglob("*") if p.is_file())
            secs = [json.loads(line)["seconds"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    finally:
        ck.Checkpointer.save = real
    later = secs[1:] or secs  # the first round also builds the clients' data and models
    save = times[1:] or times
    return (f"clients={clients:5d} state={state:6s}  round {sum(later) / len(later):7.2f} s  "
            f"checkpoint {sum(save) / len(save):6.3f} s ({100 * sum(save) / sum(later):.1f}% of a round)  "
            f"size {size / 1e6:6.2f} MB")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, nargs="+", default=[50, 1000])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--state", choices=["memory", "disk"], default="memory")
    args = ap.parse_args()
    for n in args.clients:
        print(measure(n, args.rounds, args.state), flush=True)


if __name__ == "__main__":
    main()
