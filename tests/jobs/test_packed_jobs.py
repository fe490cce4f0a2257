"""Packed jobs end to end: the scheduler claims a pack of compatible queued runs, one
real worker subprocess trains them in lockstep (engine.packed), and each run keeps
its own store row, epochs, outcome and checkpoint, on a real SQLite store.

Packs are for GPUs (jobs.packing.PACK_DEVICES); here the scheduler is told to pack
CPU runs, which runs the same worker and scheduler code (the engine then simulates
the pack's runs one by one: the compiled CPU loops have no run axis).
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

import engine
from engine.rundir import RunDir
from jobs.executors import LocalExecutor
from jobs.models import RunKind, RunState
from jobs.packing import plan_packs
from jobs.paths import DataDir
from jobs.scheduler import Scheduler
from jobs.store import RunStore
from tests.jobs.conftest import tick_until

# about a second per epoch per run on one thread
TINY = dict(arch="ping", n_e=24, n_i=6, t_ms=10.0, epochs=3, batch_size=200, tier="smoke")


def without_time(records):
    return [{k: v for k, v in r.items() if k != "epoch_s"} for r in records]


@pytest.fixture
def data(tmp_path):
    return DataDir.at(tmp_path / "data")


def _queue(store, *configs):
    return [store.create_run(RunKind.TRAIN, engine.Config.from_dict(config).to_dict()) for config in configs]


def _alone(tmp_path, config: dict) -> list[dict]:
    """The epoch records of `config` trained alone, in this process, on one thread as
    the worker (float32 sums depend on how they are split over threads)."""
    run_dir = tmp_path / "alone" / str(abs(hash(str(sorted(config.items())))))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        engine.train(engine.Config.from_dict(config), run_dir)
    finally:
        torch.set_num_threads(threads)
    return without_time(RunDir(run_dir).read_metrics())


def _packing_scheduler(store, data, pack_runs):
    executor = LocalExecutor(data.root, slots=1, use_gpus=False)
    return Scheduler(store, executor, pack_runs=pack_runs, pack_devices=("cpu",))


def test_only_gpu_runs_pack_unless_told(store):
    cpu = _queue(store, TINY, {**TINY, "seed": 2})
    assert [len(job) for job in plan_packs(cpu, max_runs=3)] == [1, 1]
    assert [len(job) for job in plan_packs(cpu, max_runs=3, devices=("cpu",))] == [2]


def test_a_pack_trains_its_runs_and_one_cancel_stops_only_that_run(tmp_path, data):
    store = RunStore(data.db_path)
    # The worker reads the cancel flag as it stores each epoch, so a cancel asked before
    # epoch e is stored stops the run before epoch e + 2 begins, heartbeat or not
    # (a heartbeat alone came too late once on CI). Five epochs leave room for a slow poll.
    configs = [{**TINY, "epochs": 5}, {**TINY, "epochs": 5, "arch": "coba", "seed": 2},
               {**TINY, "epochs": 5, "seed": 3, "lr": 3e-3}]
    runs = _queue(store, *configs)
    scheduler = _packing_scheduler(store, data, pack_runs=3)
    scheduler.tick()
    claimed = [store.get_run(run.id) for run in runs]
    assert all(run.state is RunState.RUNNING for run in claimed)
    assert scheduler.executor.free_slots() == 0  # one job, one slot
    tick_until(scheduler, lambda: len({store.get_run(r.id).worker_pid for r in runs} - {None}) == 1
                and all(store.get_run(r.id).worker_pid for r in runs), 60)  # one process for the three

    cancelled = runs[1]
    tick_until(scheduler, lambda: len(store.metrics(cancelled.id)) >= 1, 120)
    store.request_cancel(cancelled.id)
    scheduler.cancel(cancelled.id)
    assert len(store.metrics(cancelled.id)) <= 3, "the test asked for the cancel too late to see it work"
    tick_until(scheduler, lambda: store.get_run(cancelled.id).state.finished, 30)
    assert store.get_run(cancelled.id).state is RunState.CANCELLED

    tick_until(scheduler, lambda: all(store.get_run(r.id).state.finished for r in runs), 180)
    # the other two went on after the cancel: all their epochs, each as trained alone
    for run, config in ((runs[0], configs[0]), (runs[2], configs[2])):
        done = store.get_run(run.id)
        assert done.state is RunState.SUCCEEDED, done.error
        assert done.progress == 1.0
        assert (data.run_dir(run.id) / "artifacts" / "weights_final.npz").is_file()
        assert without_time(store.metrics(run.id)) == _alone(tmp_path, config)
    # the cancelled run kept the epochs it finished before the cancel, each as trained alone
    kept = without_time(store.metrics(cancelled.id))
    assert kept and kept == _alone(tmp_path, configs[1])[:len(kept)]
    tick_until(scheduler, lambda: scheduler.executor.free_slots() == 1, 10)


@pytest.mark.slow  # 35 s on the loaded 2-core VM; tests/engine/test_packed_training.py resumes in-process
def test_a_killed_pack_resumes_each_run_from_its_own_checkpoint(tmp_path, data):
    store = RunStore(data.db_path)
    configs = [TINY, {**TINY, "arch": "coba", "seed": 2}]
    runs = _queue(store, *configs)
    scheduler = _packing_scheduler(store, data, pack_runs=2)
    tick_until(scheduler, lambda: all(len(store.metrics(r.id)) >= 1 for r in runs), 120)
    pid = store.get_run(runs[0].id).worker_pid
    assert pid and store.get_run(runs[1].id).worker_pid == pid
    os.kill(pid, signal.SIGKILL)
    stored = {r.id: len(store.metrics(r.id)) for r in runs}
    tick_until(scheduler, lambda: all(store.get_run(r.id).attempt == 2 for r in runs), 30)  # claimed again
    tick_until(scheduler, lambda: all(store.get_run(r.id).state.finished for r in runs), 180)
    for run, config in zip(runs, configs):
        done = store.get_run(run.id)
        assert done.state is RunState.SUCCEEDED, done.error
        assert done.resumed_from_epoch == stored[run.id] >= 1  # from its own checkpoint, not from scratch
        assert without_time(store.metrics(run.id)) == _alone(tmp_path, config)


def test_pack_runs_comes_from_the_environment_and_the_serve_flag():
    from app.cli import build_parser
    from app.settings import Settings

    assert Settings.from_env({}).pack_runs == 1  # off unless asked for
    assert Settings.from_env({"SPIKEBOARD_PACK_RUNS": "6"}).pack_runs == 6
    assert build_parser().parse_args(["serve", "--pack-runs", "6"]).pack_runs == 6
    with pytest.raises(ValueError, match="pack_runs"):
        Settings(pack_runs=0)


def test_executors_without_packs_get_one_run_per_job(store):
    class OneRunExecutor:  # the Ray executor's shape: no submit_pack
        def free_slots(self):
            return 0

    assert Scheduler(store, OneRunExecutor(), pack_runs=6).pack_runs == 1
    assert Scheduler(store, LocalExecutor(store.path.parent, slots=0), pack_runs=6).pack_runs == 6
