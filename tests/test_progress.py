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


def test_set_up_before_the_first_step_and_a_resumed_runs_earlier_steps_do_not_count_as_step_time(monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1000.0)
    # 600 s of item Gram before round 1, then 20 s for round 1: 44 rounds of 20 s left, not 44 of 620 s
    assert progress("round", 1, 45, 380.0, t_steps=980.0) == "round 1/45  10m20s elapsed, ~14m40s left"
    # resumed at round 31: two rounds of 10 s done in this process, 13 left
    assert progress("round", 32, 45, 980.0, t_steps=980.0, first=31) == "round 32/45  20.0s elapsed, ~2m10s left"
