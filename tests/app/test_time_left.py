"""Time left of a running run, from its own pace (app/dashboard/time_left.py)."""

from __future__ import annotations

import dataclasses
import statistics
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


def test_a_study_plays_its_runs_through_the_slots_in_queue_order():
    """nb024 at its own scale: two runs train (at their own paces), two wait; two slots."""
    ping = {"epochs": 100, "tier": "medium", "t_ms": 200.0, "dt_ms": 0.1, "n_e": 1024, "n_i": 256}
    coba = dict(ping)
    entry = time_left.QueueEntry
    runs = [entry(ping, RunState.RUNNING, _epochs(40, 300.0)),   # 60 to go at 300 s: ends at 18,000 s
            entry(coba, RunState.RUNNING, _epochs(50, 200.0)),   # 50 to go at 200 s: ends at 10,000 s
            entry(ping, RunState.QUEUED, []), entry(coba, RunState.QUEUED, []),  # 100 each at 250 s, the median
            entry(ping, RunState.SUCCEEDED, _epochs(100, 250.0))]  # done: it only lends its pace
    # the first queued run takes the slot freed at 10,000 s, the second the one freed at 18,000 s
    assert time_left.study_seconds_left(runs, workers=2) == 18_000 + 25_000
    # without the COBA run its pace is gone: 275 s, the median of 300 and 250
    assert time_left.study_seconds_left([runs[0], *runs[2:]], workers=1) == 18_000 + 2 * 27_500
    assert time_left.study_seconds_left(runs[2:4], workers=2) is None  # no epoch yet: no pace
    assert time_left.study_seconds_left(runs[:1], workers=8) == 18_000  # the longest run bounds it
    deleted = entry(ping, None, [])  # a deleted member is no run to wait for
    assert time_left.study_seconds_left([*runs, deleted], workers=2) == 18_000 + 25_000
    # another study's run holds a slot and one waits ahead: the study's queued runs wait for them
    other = [entry(coba, RunState.RUNNING, _epochs(99, 100.0), member=False),  # 100 s to go
             entry(coba, RunState.QUEUED, _epochs(90, 100.0), member=False)]  # 1,000 s to go
    queue = [runs[0], other[0], other[1], *runs[2:]]
    # not-started runs now go at the median of four paces (the other runs' 100 s epochs too);
    # slot B: the other runs to 100 s and 1,100 s, then the queued PING; slot A: PING to
    # 18,000 s, then the queued COBA, which ends last
    per_run = 100 * statistics.median([300.0, 100.0, 100.0, 250.0])
    assert time_left.study_seconds_left(queue, workers=2) == 18_000 + per_run
    assert time_left.study_seconds_left(queue, workers=1) == 18_000 + 1_000 + 2 * per_run  # packed: free when both end


def test_a_run_not_started_goes_at_the_pace_of_the_runs_most_like_it():
    seed = {"epochs": 10, "tier": "medium", "t_ms": 200.0, "dt_ms": 0.1, "n_e": 1024, "n_i": 256, "recipe": "seed"}
    entry = time_left.QueueEntry
    runs = [entry({**seed, "arch": "ping"}, RunState.RUNNING, _epochs(5, 100.0)),
            entry({**seed, "arch": "coba"}, RunState.SUCCEEDED, _epochs(10, 60.0)),
            entry({**seed, "recipe": "canonical", "arch": "coba"}, RunState.SUCCEEDED, _epochs(10, 20.0), member=False),
            entry({**seed, "arch": "coba"}, RunState.QUEUED, [])]
    assert time_left.study_seconds_left(runs, workers=1) == 5 * 100.0 + 10 * 60.0  # COBA's pace, not canonical's
    runs[1] = entry({**seed, "arch": "coba", "recipe": "x"}, RunState.SUCCEEDED, [])
    assert time_left.study_seconds_left(runs, workers=1) == 5 * 100.0 + 10 * 100.0  # then the recipe's


def test_the_queue_order_is_running_then_served_order_then_not_launched():
    base = {"arch": "ping", "epochs": 10}
    late = dataclasses.replace(a_run(RunKind.TRAIN, base), id="late", state=RunState.QUEUED, created_at=2.0)
    fronted = dataclasses.replace(late, id="fronted", priority=3, created_at=3.0)
    mine = dataclasses.replace(late, id="mine", created_at=1.0)
    training = dataclasses.replace(late, id="training", state=RunState.RUNNING)
    entries = time_left.queue_entries(
        [({"who": "mine"}, mine, RunState.QUEUED, []), ({"who": "not launched"}, None, RunState.QUEUED, [])],
        [(late, []), (fronted, []), (training, [])])
    assert [e.config.get("who", "other") for e in entries] == ["other", "other", "mine", "other", "not launched"]
    assert [e.member for e in entries] == [False, False, True, False, True]
    assert entries[1].config is fronted.config and entries[0].state is RunState.RUNNING


def _epochs(n: int, seconds: float) -> list[dict]:
    return [{"epoch": e, "epoch_s": seconds} for e in range(1, n + 1)]
