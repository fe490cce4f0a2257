"""The live feed's poll: new epochs and the runs a view must redraw."""

import time

from jobs.models import RunKind, RunState
from jobs.store import RunStore


def test_epochs_recorded_since_a_time(store: RunStore):
    run = store.create_run(RunKind.TRAIN, {"epochs": 3})
    store.record_epoch(run.id, 1, {"epoch": 1})
    time.sleep(0.01)
    middle = time.time()
    store.record_epoch(run.id, 2, {"epoch": 2})
    store.record_epoch(run.id, 2, {"epoch": 2})  # a replay after resume is not news
    _, epochs = store.changes_since(middle)
    assert [(rid, rec["epoch"]) for rid, _, rec in epochs] == [(run.id, 2)]
    assert epochs[0][1] >= middle
    _, epochs = store.changes_since(0.0)
    assert [rec["epoch"] for _, _, rec in epochs] == [1, 2]


def test_runs_reported_while_unfinished_and_once_finished_after_since(store: RunStore):
    before = time.time()
    run = store.create_run(RunKind.TRAIN, {"epochs": 1})
    runs, _ = store.changes_since(time.time() + 60)
    assert [r.id for r in runs] == [run.id]  # queued: always reported
    store.claim_next()
    store.transition(run.id, RunState.SUCCEEDED)
    runs, _ = store.changes_since(before)
    assert [(r.id, r.state) for r in runs] == [(run.id, RunState.SUCCEEDED)]
    runs, _ = store.changes_since(time.time() + 60)
    assert runs == []  # finished before `since`: nothing to redraw


def test_last_epochs_gives_each_runs_latest_record(store: RunStore):
    a = store.create_run(RunKind.TRAIN, {"epochs": 3})
    b = store.create_run(RunKind.TRAIN, {"epochs": 3})
    c = store.create_run(RunKind.TRAIN, {"epochs": 3})
    for epoch in (1, 3, 2):
        store.record_epoch(a.id, epoch, {"epoch": epoch})
    store.record_epoch(b.id, 1, {"epoch": 1})
    assert store.last_epochs([a.id, b.id, c.id]) == {a.id: {"epoch": 3}, b.id: {"epoch": 1}}
    assert store.last_epochs([]) == {}
