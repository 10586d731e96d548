"""The progress line of long runs."""

from __future__ import annotations

import time

from fedmtl.progress import duration, progress


def test_durations_read_as_a_person_would_write_them():
    assert [duration(s) for s in (4.26, 59.94, 65, 3599, 3600 * 2 + 180)] == ["4.3s", "59.9s", "1m05s", "59m59s",
                                                                             "2h03m"]


def test_the_time_left_is_the_average_step_times_the_steps_left(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1000.0)
    assert progress("round", 5, 25, 990.0) == "round 5/25  10.0s elapsed, ~40.0s left"
    assert progress("epoch", 12, 12, 925.0) == "epoch 12/12  1m15s elapsed"
