"""Worker, local executor and scheduler with real subprocesses and a real SQLite file."""

import os
import subprocess
import sys
import threading
import time

import pytest

import engine
from jobs import worker
from jobs.transport import Assignment, StoreTransport
from jobs.executors import LocalExecutor
from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.scheduler import Scheduler, pid_alive
from jobs.store import RunStore

from tests.conftest import small_config
from tests.jobs.conftest import tick_until


def _fake_python(tmp_path, body: str) -> str:
    """An 'interpreter' the executor launches instead of python: a shell script."""
    script = tmp_path / "fake-python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(0o755)
    return str(script)


@pytest.fixture
def data(tmp_path):
    return DataDir.at(tmp_path / "data")


def test_worker_trains_a_run_to_success(data):
    store = RunStore(data.db_path)
    run = store.create_run(RunKind.TRAIN, engine.Config.from_dict(small_config()).to_dict())
    scheduler = Scheduler(store, LocalExecutor(data.root, slots=1, use_gpus=False))
    tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 120)
    done = store.get_run(run.id)
    assert done.state is RunState.SUCCEEDED, done.error
    assert [r["epoch"] for r in store.metrics(run.id)] == [1, 2]
    assert done.progress == 1.0 and done.worker_pid is not None and done.resumed_from_epoch is None
    assert (data.run_dir(run.id) / "artifacts" / "weights_final.npz").is_file()
    # the worker records its outcome, then exits: the slot frees when it is gone
    tick_until(scheduler, lambda: scheduler.executor.free_slots() == 1, 5)


def test_cancel_escalates_to_sigkill_after_grace(tmp_path, data):
    store = RunStore(data.db_path)
    run = store.create_run(RunKind.TRAIN, {})
    python = _fake_python(tmp_path, "trap '' TERM\nsleep 60")  # ignores SIGTERM
    executor = LocalExecutor(data.root, slots=1, grace_s=0.5, use_gpus=False, python=python)
    scheduler = Scheduler(store, executor)
    scheduler.tick()
    assert executor.is_alive(run.id)
    time.sleep(0.2)  # let the shell install its trap
    store.request_cancel(run.id)
    start = time.monotonic()
    assert executor.cancel(run.id)
    tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 5)
    assert store.get_run(run.id).state is RunState.CANCELLED
    assert 0.5 <= time.monotonic() - start < 3 and not executor.is_alive(run.id)


def test_crashed_worker_is_retried_then_failed(tmp_path, data):
    store = RunStore(data.db_path)
    run = store.create_run(RunKind.TRAIN, {})
    executor = LocalExecutor(data.root, slots=1, use_gpus=False, python=_fake_python(tmp_path, "exit 3"))
    scheduler = Scheduler(store, executor, max_attempts=2)
    tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 10)
    failed = store.get_run(run.id)
    assert failed.state is RunState.FAILED and failed.attempt == 2
    assert "worker exited with code 3" in failed.error


def test_recover_requeues_runs_whose_worker_is_dead(data):
    store = RunStore(data.db_path)
    orphan, alive = (store.create_run(RunKind.TRAIN, {}) for _ in range(2))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for run, pid in ((orphan, dead.pid), (alive, os.getpid())):
        claimed = store.claim_next()
        store.set_worker_pid(claimed.id, claimed.attempt, pid)
    assert not pid_alive(dead.pid) and pid_alive(os.getpid())
    scheduler = Scheduler(store, LocalExecutor(data.root, slots=0))
    assert scheduler.recover() == [orphan.id]
    assert store.get_run(alive.id).state is RunState.RUNNING


def _claimed(store, config):
    store.create_run(RunKind.TRAIN, config)
    return store.claim_next()


def test_non_finite_loss_fails_the_run_with_its_reason(data, monkeypatch):
    store = RunStore(data.db_path)
    run = _claimed(store, small_config())

    def train_to_nan(config, run_dir, *, on_epoch, **kwargs):
        on_epoch({"epoch": 1, "test_acc": 10.0})
        raise engine.NonFiniteError("loss became nan in epoch 2, batch 2")

    monkeypatch.setattr(engine, "train", train_to_nan)
    stop = threading.Event()
    transport = StoreTransport(data, run.id, run.attempt)
    beat = worker.Heartbeat(transport, stop)
    with pytest.raises(engine.NonFiniteError) as error:
        worker.execute(Assignment.of(run), transport, beat, stop)
    assert worker.record_outcome(transport, stop, error.value) is RunState.FAILED
    failed = store.get_run(run.id)
    assert failed.error == "loss became nan in epoch 2, batch 2" and failed.n_epochs == 1


def test_other_errors_store_the_traceback(data):
    store = RunStore(data.db_path)
    run = _claimed(store, {})
    try:
        raise KeyError("tier")
    except KeyError as exc:
        worker.record_outcome(StoreTransport(data, run.id, run.attempt), threading.Event(), exc)
    failed = store.get_run(run.id)
    assert failed.state is RunState.FAILED and "Traceback" in failed.error and "KeyError" in failed.error


@pytest.mark.parametrize("cancel_flag,expected", [(True, RunState.CANCELLED), (False, RunState.QUEUED)])
def test_a_stop_is_cancelled_only_when_asked_for(data, cancel_flag, expected):
    """SIGTERM without the cancel flag (server shutdown, parent died) requeues."""
    store = RunStore(data.db_path)
    run = _claimed(store, {})
    if cancel_flag:
        store.request_cancel(run.id)
    stop = threading.Event()
    stop.set()
    worker.record_outcome(StoreTransport(data, run.id, run.attempt), stop,
                          engine.TrainingCancelled("stopped during epoch 1"))
    assert store.get_run(run.id).state is expected


def test_heartbeat_sets_stop_on_cancel_flag(data):
    store = RunStore(data.db_path)
    run = _claimed(store, {})
    stop = threading.Event()
    beat = worker.Heartbeat(StoreTransport(data, run.id, run.attempt), stop)
    beat.progress = 0.25
    beat.beat()
    assert not stop.is_set() and store.get_run(run.id).progress == 0.25
    store.request_cancel(run.id)
    beat.beat()
    assert stop.is_set()


def test_a_cancel_is_seen_at_the_next_stored_epoch_without_a_heartbeat(data):
    """A pack's runs get no SIGTERM and a heartbeat can come late on a loaded machine
    (CI once trained a cancelled packed run to its end): the worker also reads the
    cancel flag each time it stores an epoch."""
    store = RunStore(data.db_path)
    run = _claimed(store, small_config(epochs=3))

    class CancelAfterFirstEpoch(StoreTransport):
        def record_epoch(self, epoch, record):
            super().record_epoch(epoch, record)
            store.request_cancel(run.id)  # no heartbeat runs here to pass it on

    transport = CancelAfterFirstEpoch(data, run.id, run.attempt)
    stop = threading.Event()
    with pytest.raises(engine.TrainingCancelled):
        worker._train(Assignment.of(run), transport.run_dir(), transport, lambda done, total: None, stop)
    assert [r["epoch"] for r in store.metrics(run.id)] == [1]
    assert worker.record_outcome(transport, stop, engine.TrainingCancelled("")) is RunState.CANCELLED


def test_one_slot_per_gpu_with_its_device_visible(data, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    executor = LocalExecutor(data.root, slots=1, threads_per_run=2)
    assert executor.free_slots() == 3
    slots = executor._all_slots()
    env = executor._env(slots[2])
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["OMP_NUM_THREADS"] == "2"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    cpu_only = LocalExecutor(data.root, slots=2, use_gpus=False)
    assert cpu_only.free_slots() == 2
    assert "CUDA_VISIBLE_DEVICES" not in cpu_only._env(cpu_only._all_slots()[0])


def test_shutdown_gives_running_runs_back_to_the_queue(tmp_path, data):
    import asyncio

    store = RunStore(data.db_path)
    kept, cancelled = (store.create_run(RunKind.TRAIN, {}) for _ in range(2))
    python = _fake_python(tmp_path, "trap 'exit 0' TERM\nsleep 60 & wait")  # a worker that records nothing
    scheduler = Scheduler(store, LocalExecutor(data.root, slots=2, use_gpus=False, python=python), grace_s=2)

    async def start_then_stop():
        scheduler.start()
        await asyncio.sleep(0.5)
        store.request_cancel(cancelled.id)
        await scheduler.stop()

    asyncio.run(start_then_stop())
    assert store.get_run(kept.id).state is RunState.QUEUED  # resumes on the next start
    assert store.get_run(cancelled.id).state is RunState.CANCELLED
    assert scheduler.executor.free_slots() == 2


def test_analyses_have_their_own_slot_and_never_wait_behind_training(tmp_path, data):
    """A study queues hours of training; an analysis queued after it starts at once in
    the reserved slot, which never takes training (real subprocesses: fake workers)."""
    import asyncio

    store = RunStore(data.db_path)
    training = [store.create_run(RunKind.TRAIN, {}) for _ in range(3)]
    analysis = store.create_run(RunKind.ANALYSIS, {})
    python = _fake_python(tmp_path, "trap 'exit 0' TERM\nsleep 60 & wait")  # workers that record nothing
    shared = LocalExecutor(data.root, slots=1, use_gpus=False, python=python)
    reserved = LocalExecutor(data.root, slots=1, use_gpus=False, python=python)
    scheduler = Scheduler(store, shared, reserved=reserved, grace_s=2)
    scheduler.tick()
    states = {r.id: store.get_run(r.id).state for r in (*training, analysis)}
    assert states[training[0].id] is RunState.RUNNING and shared.is_alive(training[0].id)
    assert states[analysis.id] is RunState.RUNNING and reserved.is_alive(analysis.id)
    assert [states[r.id] for r in training[1:]] == [RunState.QUEUED] * 2  # the reserved slot is busy, and
    assert reserved.free_slots() == 0 and scheduler.is_alive(analysis.id)  # would not take them anyway
    store.request_cancel(analysis.id)
    scheduler.cancel(analysis.id)  # reaches the reserved executor's worker
    tick_until(scheduler, lambda: store.get_run(analysis.id).state.finished, 15)
    assert store.get_run(analysis.id).state is RunState.CANCELLED
    scheduler.tick()
    assert reserved.free_slots() == 1 and store.get_run(training[1].id).state is RunState.QUEUED
    asyncio.run(scheduler.stop())
    assert store.get_run(training[0].id).state is RunState.QUEUED  # given back to resume later


def test_an_analysis_takes_its_own_slot_before_a_general_one(tmp_path, data):
    """Analyses moved to the front took the general slots too (the shared executor claimed
    first), and the study's training runs waited behind them after a restart."""
    import asyncio

    store = RunStore(data.db_path)
    training = store.create_run(RunKind.TRAIN, {})
    analysis = store.create_run(RunKind.ANALYSIS, {})
    store.move_to_front(analysis.id)
    python = _fake_python(tmp_path, "trap 'exit 0' TERM\nsleep 60 & wait")
    shared = LocalExecutor(data.root, slots=1, use_gpus=False, python=python)
    reserved = LocalExecutor(data.root, slots=1, use_gpus=False, python=python)
    scheduler = Scheduler(store, shared, reserved=reserved, grace_s=2)
    scheduler.tick()
    assert reserved.is_alive(analysis.id) and shared.is_alive(training.id)
    asyncio.run(scheduler.stop())


def test_claim_next_can_take_only_some_kinds(data):
    store = RunStore(data.db_path)
    train = store.create_run(RunKind.TRAIN, {})
    analysis = store.create_run(RunKind.ANALYSIS, {})
    assert store.claim_next(kinds=[RunKind.FORCE]) is None
    assert store.claim_next(kinds=[RunKind.ANALYSIS]).id == analysis.id
    assert store.claim_next(kinds=[]) is None
    assert store.claim_next().id == train.id


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="no sched_autogroup in this kernel")
def test_a_niced_worker_session_yields_the_cpu():
    """Each worker is a session of its own, and the kernel shares the CPU between
    sessions: the worker hands its inherited niceness to its session's autogroup."""
    code = "from jobs.worker import share_cpu_as_niced; share_cpu_as_niced(); print(open('/proc/self/autogroup').read())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         start_new_session=True, preexec_fn=lambda: os.nice(7))
    assert out.stdout.split()[-2:] == ["nice", "7"], out.stdout + out.stderr


@pytest.mark.skipif(not os.path.exists("/proc/self/autogroup"), reason="no sched_autogroup in this kernel")
def test_a_reniced_worker_hands_its_new_niceness_to_its_session():
    """`renice` of a running worker changed its main thread only: the session kept the
    niceness of its start until /proc was written by hand (the study, session 9)."""
    code = ("import os; from jobs.worker import share_cpu_as_niced; last = share_cpu_as_niced(); "
            "os.setpriority(os.PRIO_PROCESS, os.getpid(), 12); share_cpu_as_niced(last); "
            "print(open('/proc/self/autogroup').read())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         start_new_session=True, preexec_fn=lambda: os.nice(7))
    assert out.stdout.split()[-2:] == ["nice", "12"], out.stdout + out.stderr
