"""How long a running run has left, from its own pace on this server.

A training run's epochs take about the same time (`epoch_s`, every epoch's record), so
its time left is the median of its latest epochs' times, times the epochs to go: a
median, because an epoch slowed by a neighbour (a test run, an analysis) is an
outlier. Other runs (analyses, FORCE) only report a fraction done; their pace is the
time since they started over that fraction, which a restart would falsify (the first
attempt's time is not kept), so they get an estimate on their first attempt only.
A 100-epoch study run said "38 / 100" for days and left the user to do the sum.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Sequence

from app.dashboard.estimate import work_units
from jobs.models import Run, RunKind, RunState

PACE_EPOCHS = 10  # the latest epochs whose median time is the pace
MIN_FRACTION = 0.02  # below this a fraction-based pace is mostly start-up cost


def seconds_left(run: Run, records: Sequence[dict], now: float | None = None) -> float | None:
    """The run's time left in seconds; None when there is no pace to go by (not running,
    no epoch yet, a restarted analysis)."""
    if run.state is not RunState.RUNNING:
        return None
    if run.kind is RunKind.TRAIN:
        pace, epochs = _pace(records), run.config.get("epochs")
        if pace is None or not epochs:
            return None
        return pace * max(0, int(epochs) - run.n_epochs)
    now = time.time() if now is None else now
    fraction = run.progress or 0.0
    if run.attempt != 1 or run.started_at is None or fraction < MIN_FRACTION:
        return None
    return (now - run.started_at) * (1.0 - fraction) / fraction


def _pace(records: Sequence[dict]) -> float | None:
    """Seconds per epoch: the median of the latest epochs' times."""
    times = [r["epoch_s"] for r in records[-PACE_EPOCHS:] if r.get("epoch_s")]
    return statistics.median(times) if times else None


def study_seconds_left(runs: Sequence[tuple[dict[str, Any], RunState | None, Sequence[dict]]],
                       workers: int) -> float | None:
    """A study's training time left: (config, state, epoch records) of its training runs
    (state None: the run was deleted), `workers` general slots. A run with epochs goes at its
    own pace; one not started yet at its study-mates' pace per unit of work (images x steps x
    cells, app/dashboard/estimate);
    the runs share the slots, and the longest run bounds it from below. None before any
    run has an epoch."""
    paces = [_pace(records) for _, _, records in runs]
    per_unit = [pace / work_units(config) for (config, _, _), pace in zip(runs, paces) if pace]
    if not per_unit:
        return None
    left = []
    for (config, state, records), pace in zip(runs, paces):
        if state is None or state.finished:  # None: deleted
            continue
        to_go = max(0, int(config["epochs"]) - len(records))
        left.append(to_go * (pace or statistics.median(per_unit) * work_units(config)))
    if not left:
        return None
    return max(sum(left) / max(1, min(workers, len(left))), max(left))


def describe(seconds: float | None) -> str:
    """"about 3 h 40 min left"; "" without an estimate."""
    if seconds is None:
        return ""
    minutes = round(seconds / 60)
    if minutes < 1:
        return "less than a minute left"
    if minutes < 60:
        return f"about {minutes} min left"
    hours, minutes = divmod(minutes, 60)
    if hours >= 48:
        return f"about {round(hours / 24 + minutes / 1440, 1):g} days left"
    return f"about {hours} h {minutes:02d} min left"
