"""Work shared by two threads (`run_jobs`), on the cores this process may use (`usable_cores`):
the server's row-wise average (sparse_codec.py) and its item Gram in the clear (itemitem.py)."""

from __future__ import annotations

import threading


def usable_cores() -> int:
    """The cores this process may use."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def run_jobs(jobs: list, parallel: bool) -> None:
    """job(slot) for every job, in this thread (slot 0), or, when `parallel` and the process may
    use two cores, taken in turn by this thread and one more (slot 1). The jobs write disjoint
    outputs, each in its own fixed order, so the result is the same floats either way; an
    exception in either thread is raised here."""
    if not parallel or len(jobs) < 2 or usable_cores() < 2:
        for job in jobs:
            job(0)
        return
    todo, lock, failed = iter(jobs), threading.Lock(), []

    def loop(slot: int) -> None:
        while not failed:
            with lock:
                job = next(todo, None)
            if job is None:
                return
            try:
                job(slot)
            except BaseException as ex:  # noqa: BLE001 raised in the caller's thread
                failed.append(ex)

    other = threading.Thread(target=loop, args=(1,), daemon=True)
    other.start()
    loop(0)
    other.join()
    if failed:
        raise failed[0]
