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

import heapq
import statistics
import time
from dataclasses import dataclass
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


@dataclass(frozen=True)
class QueueEntry:
    """A training run as the queue sees it: its config, its epoch records (the latest
    PACE_EPOCHS suffice), its state (None: deleted) and whether it is one of the study's."""
    config: dict[str, Any]
    state: RunState | None
    records: Sequence[dict]
    member: bool = True

    @property
    def epochs_done(self) -> int:
        return int(self.records[-1]["epoch"]) if self.records else 0


def queue_entries(members: Sequence[tuple[dict[str, Any], Run | None, RunState | None, Sequence[dict]]],
                  others: Sequence[tuple[Run, Sequence[dict]]]) -> list[QueueEntry]:
    """The server's training runs in the order they hold or get a slot: running ones, then
    the queued ones in the store's serving order (`Run.queue_key`), then the study's runs
    not launched yet. `members`: (config, run or None when not launched, state, records)
    of the study's runs; `others`: (run, latest records) of the server's other running and
    queued training runs, whose slots the study's queued runs wait for."""
    placed = [(run, QueueEntry(config, state, records)) for config, run, state, records in members]
    placed += [(run, QueueEntry(run.config, run.state, records, member=False)) for run, records in others]

    def order(item: tuple[Run | None, QueueEntry]) -> tuple:
        run, entry = item
        if run is None:
            return (2,)
        return (0,) if entry.state is RunState.RUNNING else (1, *run.queue_key)
    return [entry for _, entry in sorted(placed, key=order)]


def study_seconds_left(entries: Sequence[QueueEntry], workers: int) -> float | None:
    """A study's training time left: the server's training runs (`queue_entries`) played
    through `workers` general slots in queue order, each at its own pace, or, before its
    first epoch, at the pace per unit of work (images x steps x cells, app/dashboard/estimate)
    of the runs most like it (same recipe and arch, else same recipe, else any). The study is
    done when its last run is. None before any run has an epoch. Finished runs only lend
    their pace. A study queued behind another one waits for it: the first version counted
    the study's own runs only, and said hours too few while a fronted run trained ahead."""
    paced = [(e, _pace(e.records)) for e in entries]
    if not any(pace for _, pace in paced) or workers < 1:
        return None
    unit_paces: dict[tuple, float] = {}  # (recipe, arch) -> seconds per unit of work

    def seconds(entry: QueueEntry, pace: float | None) -> float:
        to_go = max(0, int(entry.config["epochs"]) - entry.epochs_done)
        if pace:
            return to_go * pace
        kind = (entry.config.get("recipe"), entry.config.get("arch"))
        if kind not in unit_paces:
            unit_paces[kind] = _unit_pace(entry.config, paced)
        return to_go * unit_paces[kind] * work_units(entry.config)

    waiting = [(e, p) for e, p in paced if e.state is not None and not e.state.finished]
    running = sorted((seconds(e, p), e.member) for e, p in waiting if e.state is RunState.RUNNING)
    # a slot is free when its run ends (more running runs than slots: packed, free when the pack ends)
    slots = [end for end, _ in running][-workers:] + [0.0] * max(0, workers - len(running))
    heapq.heapify(slots)
    ends = [end for end, member in running if member]
    for entry, pace in waiting:
        if entry.state is RunState.RUNNING:
            continue
        end = heapq.heappop(slots) + seconds(entry, pace)
        heapq.heappush(slots, end)
        if entry.member:
            ends.append(end)
    return max(ends) if ends else None


def _unit_pace(config: dict[str, Any], paced: Sequence[tuple[QueueEntry, float | None]]) -> float:
    """Seconds per unit of work of the runs most like `config` that have a pace."""
    per_unit = [(e.config, pace / work_units(e.config)) for e, pace in paced if pace]
    for same in (("recipe", "arch"), ("recipe",), ()):
        alike = [v for c, v in per_unit if all(c.get(k) == config.get(k) for k in same)]
        if alike:
            return statistics.median(alike)
    raise AssertionError("called with no pace at all")  # study_seconds_left checks first


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
