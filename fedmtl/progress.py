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


def progress(what: str, step: int, total: int, t_start: float, t_steps: float | None = None,
             first: int = 1) -> str:
    """`round 3/25  12.4s elapsed, ~1m31s left`: the time left assumes the remaining steps
    take as long as the finished ones did on average. `t_steps` (default `t_start`): when this
    process began step `first`, so one-off set-up before it (a secure item Gram, data loading)
    and the steps a resumed run did before it do not count as time per step."""
    now = time.time()
    elapsed = now - t_start
    left = (now - (t_start if t_steps is None else t_steps)) / max(step - first + 1, 1) * (total - step)
    return f"{what} {step}/{total}  {duration(elapsed)} elapsed" + (f", ~{duration(left)} left" if step < total else "")
