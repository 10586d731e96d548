"""What the DP modes' secret noise costs: ms per million values of `secure_random.gaussian`
(OS-keyed AES-256-CTR keystream, Opacus' hardened sum of four Box-Muller normals), beside
the same shape drawn from NumPy's seedable generator (not secret: for scale only).

    python benchmarks/secure_noise.py [--values 1000000] [--repeats 9] [--threads 1]

Prints the median and the fastest of the repeats, one line a draw. A secagg_dp client draws
one value per shared value it uploads (about 150,000 at MovieLens-100k), every round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fedmtl import secure_random  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, fastest) seconds of `repeats` calls, after one warm-up call."""
    fn()
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs), min(runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--values", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the simulation's backend.threads)")
    args = ap.parse_args()
    if args.values < 1 or args.repeats < 1 or args.threads < 1:
        sys.exit("secure_noise.py: --values, --repeats and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    per_million = 1e9 / args.values  # seconds -> ms per million values
    rng = np.random.default_rng(0)
    draws = {
        "secure_random.gaussian (float32 out)": lambda: secure_random.gaussian((args.values,), 1.0, np.float32),
        "secure_random.uniform (4 a value)": lambda: secure_random.uniform(4 * args.values),
        "numpy default_rng normal (not secret)": lambda: rng.standard_normal(args.values, dtype=np.float32),
    }
    print(f"{args.values:,} values, {args.repeats} repeats, {args.threads} torch thread(s)")
    for name, fn in draws.items():
        median, fastest = timed(fn, args.repeats)
        print(f"{name:40s} {median * per_million:8.1f} ms / 1M values (fastest {fastest * per_million:.1f})")


if __name__ == "__main__":
    main()
