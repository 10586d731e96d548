"""One progress line per round or epoch of a long run: where it is, time spent, time left."""

from __future__ import annotations

import time


def duration(seconds: float) -> str:
    """12.3s, 4m05s, 2h03m."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


def progress(what: str, step: int, total: int, t_start: float) -> str:
    """`round 3/25  12.4s elapsed, ~1m31s left`: the time left assumes the remaining steps
    take as long as the finished ones did on average."""
    elapsed = time.time() - t_start
    left = elapsed / max(step, 1) * (total - step)
    return f"{what} {step}/{total}  {duration(elapsed)} elapsed" + (f", ~{duration(left)} left" if step < total else "")
