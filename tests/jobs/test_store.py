import itertools
import threading
import time

import pytest

from jobs.models import (TRANSITIONS, Conflict, InvalidTransition, RunKind, RunNotFound, RunState,
                         sweep_state)
from jobs.store import RunStore

ALL_PAIRS = list(itertools.product(RunState, RunState))


def _run_in(store: RunStore, state: RunState):
    """A run brought to `state` through allowed transitions only."""
    run = store.create_run(RunKind.TRAIN, {"epochs": 1})
    if state is RunState.QUEUED:
        return run
    claimed = store.claim_next()
    assert claimed.id == run.id
    if state is RunState.RUNNING:
        return claimed
    return store.transition(run.id, state)


@pytest.mark.parametrize("current,target", ALL_PAIRS, ids=lambda s: s.value)
def test_transition_allowed_exactly_by_the_table(store, current, target):
    run = _run_in(store, current)
    if target in TRANSITIONS[current]:
        assert store.transition(run.id, target).state is target
    else:
        with pytest.raises(InvalidTransition):
            store.transition(run.id, target)
        assert store.get_run(run.id).state is current


def test_finished_states_have_no_way_out():
    for state in (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED):
        assert TRANSITIONS[state] == frozenset() and state.finished


def test_unknown_run_is_not_found(store):
    with pytest.raises(RunNotFound):
        store.get_run("nope")
    with pytest.raises(RunNotFound):
        store.transition("nope", RunState.RUNNING)


def test_epoch_insert_is_idempotent(store):
    run = store.create_run(RunKind.TRAIN, {})
    assert store.record_epoch(run.id, 1, {"epoch": 1, "test_acc": 10.0})
    assert not store.record_epoch(run.id, 1, {"epoch": 1, "test_acc": 99.0})  # a resume replay
    assert store.record_epoch(run.id, 2, {"epoch": 2, "test_acc": 20.0})
    assert [r["test_acc"] for r in store.metrics(run.id)] == [10.0, 20.0]
    assert store.get_run(run.id).n_epochs == 2
    assert [r["epoch"] for r in store.metrics(run.id, after_epoch=1)] == [2]


def test_claim_takes_oldest_and_each_run_once(tmp_path):
    first = RunStore(tmp_path / "db")
    second = RunStore(tmp_path / "db")  # another process's connection to the same file
    ids = [first.create_run(RunKind.TRAIN, {"seed": i}).id for i in range(20)]
    claimed: list[str] = []

    def drain(store):
        while (run := store.claim_next()) is not None:
            claimed.append(run.id)

    threads = [threading.Thread(target=drain, args=(s,)) for s in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(claimed) == sorted(ids) and len(set(claimed)) == 20
    run = first.get_run(ids[0])
    assert run.state is RunState.RUNNING and run.attempt == 1 and run.started_at is not None


def test_a_run_moved_to_the_front_is_claimed_next(store):
    a, b, c, d = (store.create_run(RunKind.TRAIN, {"seed": i}) for i in range(4))
    assert store.move_to_front(c.id).priority > 0
    store.move_to_front(d.id)  # moved later: goes before c
    assert [store.claim_next().id for _ in range(4)] == [d.id, c.id, a.id, b.id]
    with pytest.raises(Conflict, match="only a queued run"):
        store.move_to_front(a.id)  # running now
    with pytest.raises(RunNotFound):
        store.move_to_front("nope")


def test_a_paused_queue_starts_nothing_until_resumed_and_stays_paused_across_a_restart(tmp_path):
    """Queue several runs, order them, then resume: while paused, claim_next gives none,
    however many wait; a restart (a new store on the file) keeps the pause."""
    store = RunStore(tmp_path / "runs.db")
    first = store.create_run(RunKind.TRAIN, {"seed": 1})
    assert store.queue_paused_at() is None
    assert store.pause_queue(now=100.0) == 100.0
    assert store.pause_queue(now=200.0) == 100.0  # paused already: the first time stands
    later = store.create_run(RunKind.ANALYSIS, {})
    store.move_to_front(later.id)
    assert store.claim_next() is None and store.claim_next(kinds=[RunKind.ANALYSIS]) is None
    store.close()
    store = RunStore(tmp_path / "runs.db")
    assert store.queue_paused_at() == 100.0 and store.claim_next() is None
    assert store.claim(first.id) is None  # a pack-mate claimed after the pause waits too
    store.resume_queue()
    assert store.queue_paused_at() is None
    assert [store.claim_next().id, store.claim_next().id] == [later.id, first.id]
    store.close()


def test_runs_a_restart_requeued_are_claimed_before_runs_moved_to_the_front(store):
    """The study's restart: two training runs and an analysis were running, seven analyses
    had been moved to the front meanwhile, and the restart gave the training runs' slots to
    those (each restart then cost the interrupted runs their place until the others ended)."""
    running = [store.create_run(RunKind.TRAIN, {"seed": i}) for i in range(2)]
    waiting = store.create_run(RunKind.TRAIN, {"seed": 9})
    for run in running:
        store.claim(run.id)
    fronted = store.create_run(RunKind.ANALYSIS, {})
    store.move_to_front(fronted.id)
    for run in running:  # the server stops: its workers give their runs back
        assert store.requeue(run.id, 1, restart=True)
    queued = [store.get_run(r.id) for r in (waiting, fronted, *running)]
    by_key = [r.id for r in sorted(queued, key=lambda r: r.queue_key)]  # the order packing sorts by
    claimed = [store.claim_next().id for _ in range(4)]
    assert claimed == [running[0].id, running[1].id, fronted.id, waiting.id] == by_key


def test_a_store_file_from_before_priorities_is_upgraded(tmp_path):
    """A data dir written before the priority column (the study's, kept across
    releases) opens, keeps its queue order and can move runs to the front."""
    import sqlite3

    path = tmp_path / "db"
    old = RunStore(path)
    ids = [old.create_run(RunKind.TRAIN, {"seed": i}).id for i in range(3)]
    old.close()
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE runs DROP COLUMN priority")
    conn.commit()
    conn.close()
    store = RunStore(path)
    assert [store.get_run(i).priority for i in ids] == [0, 0, 0]
    store.move_to_front(ids[2])
    assert [store.claim_next().id for _ in range(3)] == [ids[2], ids[0], ids[1]]


def test_reap_stale_uses_the_given_time(store):
    run = store.create_run(RunKind.TRAIN, {})
    claimed = store.claim_next(now=1000.0)
    assert store.heartbeat(run.id, claimed.attempt, now=1010.0, progress=0.5)
    assert store.reap_stale(now=1030.0, stale_after_s=30.0) == []  # beat 20 s ago: alive
    assert store.reap_stale(now=1041.0, stale_after_s=30.0) == [run.id]
    requeued = store.get_run(run.id)
    assert requeued.state is RunState.QUEUED and requeued.progress == 0.5


def test_heartbeat_of_an_old_attempt_reports_the_lease_lost(store):
    run = store.create_run(RunKind.TRAIN, {})
    first = store.claim_next()
    store.reap_stale(now=first.heartbeat_at + 100, stale_after_s=30)
    second = store.claim_next()
    assert second.attempt == first.attempt + 1
    assert not store.heartbeat(run.id, first.attempt)
    assert store.heartbeat(run.id, second.attempt)
    with pytest.raises(Conflict):
        store.transition(run.id, RunState.SUCCEEDED, attempt=first.attempt)


def test_cancel_queued_at_once_running_by_flag_finished_refused(store):
    queued = store.create_run(RunKind.TRAIN, {})
    assert store.request_cancel(queued.id).state is RunState.CANCELLED
    running = _run_in(store, RunState.RUNNING)
    after = store.request_cancel(running.id)
    assert after.state is RunState.RUNNING and after.cancel_requested
    done = _run_in(store, RunState.SUCCEEDED)
    with pytest.raises(InvalidTransition):
        store.request_cancel(done.id)


def test_delete_refuses_unfinished_runs(store):
    running = _run_in(store, RunState.RUNNING)
    with pytest.raises(Conflict):
        store.delete_run(running.id)
    done = _run_in(store, RunState.FAILED)
    store.record_epoch(done.id, 1, {"epoch": 1})
    store.delete_run(done.id)
    with pytest.raises(RunNotFound):
        store.get_run(done.id)
    assert store.metrics(done.id) == []


def test_list_filters_and_pages(store):
    for i in range(5):
        store.create_run(RunKind.TRAIN, {"seed": i})
    store.create_run(RunKind.ANALYSIS, {"name": "x"}, source_run_id="abc")
    runs, count = store.list_runs(kind=RunKind.TRAIN, limit=2, offset=1)
    assert count == 5 and len(runs) == 2
    runs, count = store.list_runs(state=RunState.RUNNING)
    assert (runs, count) == ([], 0)


@pytest.mark.parametrize("children,cancelled,expected", [
    ((RunState.QUEUED, RunState.SUCCEEDED), False, RunState.RUNNING),
    ((RunState.RUNNING, RunState.FAILED), False, RunState.RUNNING),
    ((RunState.SUCCEEDED, RunState.SUCCEEDED), False, RunState.SUCCEEDED),
    ((RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED), False, RunState.FAILED),
    ((RunState.SUCCEEDED, RunState.CANCELLED), True, RunState.CANCELLED),
])
def test_sweep_state_follows_children(children, cancelled, expected):
    assert sweep_state(children, cancelled) is expected


def test_sweep_creates_its_children_in_one_go(store):
    sweep = store.create_sweep({"epochs": 1}, {"seed": [1, 2, 3]}, [{"seed": s} for s in (1, 2, 3)])
    assert len(sweep.run_ids) == 3 and sweep.state is RunState.RUNNING
    runs, count = store.list_runs(sweep_id=sweep.id)
    assert count == 3 and {r.config["seed"] for r in runs} == {1, 2, 3}


def test_a_run_sent_back_goes_to_the_end_of_the_queue(store):
    """`runs requeue`: a running run gives its slot away on purpose, so unlike a run a
    restart requeued it does not take the next free slot back, nor (by its age) the one
    after: it is served as if submitted when it was sent back, without the priority of an
    earlier "Start next", and loses the mark when it runs again."""
    sent_back = store.create_run(RunKind.TRAIN, {"seed": 1})
    restarted = store.create_run(RunKind.TRAIN, {"seed": 2})
    waiting = store.create_run(RunKind.TRAIN, {"seed": 3})
    store.move_to_front(sent_back.id)
    for run in (sent_back, restarted):
        store.claim(run.id)
    with pytest.raises(Conflict, match="only a running run can go back to the queue"):
        store.request_requeue(waiting.id)
    marked = store.request_requeue(sent_back.id, now=waiting.created_at + 1e-3)
    assert marked.requeued_at is not None and marked.priority == 0 and store.stop_requested(sent_back.id)
    assert not store.stop_requested(restarted.id)
    assert store.requeue(sent_back.id, 1, restart=True)  # its worker stopped and gave it back
    assert store.requeue(restarted.id, 1, restart=True)  # the server stopped
    time.sleep(0.01)
    later = store.create_run(RunKind.TRAIN, {"seed": 4})
    fronted = store.create_run(RunKind.TRAIN, {"seed": 5})
    store.move_to_front(fronted.id)
    queued = [store.get_run(r.id) for r in (sent_back, restarted, waiting, later, fronted)]
    assert queued[0].requeued_at is not None and not store.stop_requested(sent_back.id)  # queued: nothing to stop
    by_key = [r.id for r in sorted(queued, key=lambda r: r.queue_key)]
    claimed = [store.claim_next().id for _ in range(5)]
    # behind what waited when it was sent back, ahead of what was submitted later
    assert claimed == [restarted.id, fronted.id, waiting.id, sent_back.id, later.id] == by_key
    again = store.get_run(sent_back.id)
    assert again.requeued_at is None and again.restarts == 1 and again.crashes == 1  # a restart, not a crash


def test_a_cancel_asked_first_stands_over_a_requeue_and_a_finished_run_is_not_sent_back(store):
    run = store.create_run(RunKind.TRAIN, {})
    store.claim(run.id)
    store.request_cancel(run.id)
    with pytest.raises(Conflict, match="being cancelled"):
        store.request_requeue(run.id)
    assert store.stop_requested(run.id) and store.get_run(run.id).requeued_at is None
    other = store.create_run(RunKind.TRAIN, {})
    store.claim(other.id)
    first = store.request_requeue(other.id, now=100.0).requeued_at
    assert store.request_requeue(other.id, now=200.0).requeued_at == first == 100.0  # a double click keeps its place
    store.transition(other.id, RunState.SUCCEEDED)  # it finished before its worker saw the request
    done = store.get_run(other.id)
    assert done.requeued_at is None and store.stop_flags(other.id) == (False, False)
