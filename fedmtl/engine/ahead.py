"""A cohort worker's next training round, prepared while it waits for it (engine/cohort.py's workers)."""

from __future__ import annotations

import logging

from ..cohort import prepare_ahead

log = logging.getLogger("fedmtl")


class Ahead:
    """A worker's next training round prepared while it waits (cohort.prepare_ahead: each client's row
    set, permutations and pairs, which depend on its data, the round and the seed only, not on the
    arrays the round brings): the same clients as the last round, one round on. The server spends
    about a fifth of a round screening and aggregating with one core while the workers wait; this
    fills that core. The work runs on a thread of the lowest priority (nice 19, where the OS allows
    it), so that it takes the idle core, not the server's; `take` waits for it and returns what it
    prepared, which train_cohort uses only where a job matches it (client, round and data)."""

    def __init__(self):
        self.planned = None  # (setup, jobs) for `start`
        self.thread = None
        self.result: dict = {}

    def plan(self, setup, jobs) -> None:
        self.planned = (setup, jobs)

    def start(self) -> None:
        """Prepare the planned round on a low-priority thread (after this round's replies are sent)."""
        import threading

        if self.planned is None or self.thread is not None:
            return
        setup, jobs = self.planned
        self.planned = None

        def run():
            import os

            try:  # this thread only (Linux: a thread's id is a pid to setpriority)
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except (AttributeError, OSError):
                pass
            try:
                self.result = prepare_ahead(setup, jobs)
            except Exception as ex:  # noqa: BLE001 the round then prepares its clients itself, as without this
                log.debug("backend=cohort: preparing the next round ahead failed (%s: %s)", type(ex).__name__, ex)
                self.result = {}

        self.thread = threading.Thread(target=run, name="fedmtl-prepare-ahead", daemon=True)
        self.thread.start()

    def take(self) -> dict:
        """What the thread prepared (empty if none ran); it starts over for the next round."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        out, self.result = self.result, {}
        return out
