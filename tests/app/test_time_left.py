"""Time left of a running run, from its own pace (app/dashboard/time_left.py)."""

from __future__ import annotations

import dataclasses
import time

from app.dashboard import time_left
from app.dashboard.runs_page import run_row
from jobs.models import RunKind, RunState
from tests.app.test_runs_table import a_run


def _training(done: int, epochs: int = 100):
    run = a_run(RunKind.TRAIN, {"arch": "ping", "epochs": epochs})
    return dataclasses.replace(run, state=RunState.RUNNING, progress=done / epochs, n_epochs=done)


def test_a_training_run_has_its_latest_epochs_median_time_per_epoch_to_go():
    # epoch 38 was slowed by a neighbour (2,500 s): the median ignores it
    records = [{"epoch": e, "epoch_s": 2500.0 if e == 38 else 200.0 + e % 3} for e in range(1, 39)]
    left = time_left.seconds_left(_training(38), records)
    assert left == 201.0 * 62  # the median of epochs 29..38's times, times 62 epochs
    assert time_left.describe(left) == "about 3 h 28 min left"
    assert time_left.seconds_left(_training(0), []) is None  # no epoch yet: no pace
    finished = dataclasses.replace(_training(100), state=RunState.SUCCEEDED)
    assert time_left.seconds_left(finished, records) is None


def test_an_analysis_goes_by_its_fraction_on_its_first_attempt_only():
    now = time.time()
    analysis = dataclasses.replace(a_run(RunKind.ANALYSIS, {"name": "drop_add_spikes"}, "0123456789ab"),
                                   state=RunState.RUNNING, progress=0.25, started_at=now - 600, attempt=1)
    assert time_left.seconds_left(analysis, [], now=now) == 1800.0
    restarted = dataclasses.replace(analysis, attempt=2)  # its first attempt's time is not kept
    assert time_left.seconds_left(restarted, [], now=now) is None
    just_started = dataclasses.replace(analysis, progress=0.01)
    assert time_left.seconds_left(just_started, [], now=now) is None


def test_the_words():
    assert [time_left.describe(s) for s in (None, 20, 600, 3600 * 5 + 61, 3600 * 60)] == [
        "", "less than a minute left", "about 10 min left", "about 5 h 01 min left", "about 2.5 days left"]


def test_the_runs_table_says_how_long_a_training_run_has_left():
    row = run_row(_training(38), {"epoch": 38, "epoch_s": 240.0})
    assert row["detail"] == "about 4 h 08 min left"
    assert run_row(_training(38), None)["detail"] == ""


def test_a_study_has_its_runs_time_left_shared_among_the_slots():
    """nb024 at its own scale: two runs train (at their own paces), two wait; two slots."""
    ping = {"epochs": 100, "tier": "medium", "t_ms": 200.0, "dt_ms": 0.1, "n_e": 1024, "n_i": 256}
    coba = dict(ping)
    runs = [(ping, RunState.RUNNING, [{"epoch_s": 300.0}] * 40),   # 60 to go at 300 s
            (coba, RunState.RUNNING, [{"epoch_s": 200.0}] * 50),   # 50 to go at 200 s
            (ping, RunState.QUEUED, []), (coba, RunState.QUEUED, []),  # 100 each at the median pace, 250 s
            (ping, RunState.SUCCEEDED, [{"epoch_s": 250.0}] * 100)]  # done: it only lends its pace
    left = time_left.study_seconds_left(runs, workers=2)
    assert left == (60 * 300 + 50 * 200 + 2 * 100 * 250) / 2
    assert time_left.study_seconds_left(runs, workers=1) == 60 * 300 + 50 * 200 + 2 * 100 * 250
    assert time_left.study_seconds_left(runs[2:4], workers=2) is None  # no epoch yet: no pace
    assert time_left.study_seconds_left(runs[:1], workers=8) == 60 * 300  # the longest run bounds it
    deleted = (ping, None, [])  # a deleted member is no run to wait for
    assert time_left.study_seconds_left([*runs, deleted], workers=2) == left
