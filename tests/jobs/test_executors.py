"""One contract suite for both executors: the same scheduler, store and worker
(real subprocesses, real training at a tiny size, a real SQLite file), run once
with local subprocesses and once with Ray tasks on a Ray instance this module
starts (2 CPUs, no dashboard). Only how a worker is lost differs: the local one
loses its worker process, the Ray one the Ray worker process that runs the task."""

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

import engine
from jobs.executors import LocalExecutor, make_executor
from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.scheduler import Scheduler, pid_alive
from jobs.store import RunStore

from tests.conftest import small_config
from tests.jobs.conftest import tick_until

EXECUTOR_NAMES = ("local", "ray")


@pytest.fixture(scope="module")
def ray_instance():
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
    ray.init(num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=100 * 2**20,
             log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def data(tmp_path):
    return DataDir.at(tmp_path / "data")


@pytest.fixture
def store(data):
    store = RunStore(data.db_path)
    yield store
    store.close()


@pytest.fixture(params=EXECUTOR_NAMES)
def executor_name(request):
    if request.param == "ray":
        request.getfixturevalue("ray_instance")
    return request.param


@pytest.fixture
def executor(executor_name, data):
    executor = make_executor(executor_name, data_dir=data.root, slots=2, grace_s=1.0, use_gpus=False)
    yield executor
    executor.shutdown(2.0)


def _train_run(store, **overrides):
    return store.create_run(RunKind.TRAIN, engine.Config.from_dict(small_config(**overrides)).to_dict())


def _worker_started(store, run_id):
    run = store.get_run(run_id)
    return run.state is RunState.RUNNING and run.worker_pid is not None


def _parent_pid(pid: int) -> int:
    # /proc/PID/stat: the parent pid is the second field after the parenthesised name
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


def test_a_run_trains_to_success_with_its_epochs_in_the_store(executor, store, data):
    run = _train_run(store)
    scheduler = Scheduler(store, executor)
    scheduler.tick()
    assert executor.free_slots() == 1 and executor.is_alive(run.id)
    tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 120)
    done = store.get_run(run.id)
    assert done.state is RunState.SUCCEEDED, done.error
    assert [r["epoch"] for r in store.metrics(run.id)] == [1, 2] and done.attempt == 1
    assert (data.run_dir(run.id) / "artifacts" / "weights_final.npz").is_file()
    tick_until(scheduler, lambda: executor.free_slots() == 2, 10)  # the slot frees when the worker is gone
    assert not executor.is_alive(run.id)


def test_cancel_stops_the_worker_and_frees_its_slot(executor, store):
    run = _train_run(store, epochs=50)
    scheduler = Scheduler(store, executor, grace_s=1.0)
    tick_until(scheduler, lambda: _worker_started(store, run.id), 60)
    pid = store.get_run(run.id).worker_pid
    store.request_cancel(run.id)  # what JobService.cancel does: the flag, then the executor
    assert executor.cancel(run.id) and not executor.cancel("no-such-run")
    tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 15)
    assert store.get_run(run.id).state is RunState.CANCELLED
    # the worker process is gone, and with it any GPU memory it held
    tick_until(scheduler, lambda: not pid_alive(pid) and executor.free_slots() == 2, 10)
    assert not executor.is_alive(run.id)


def test_a_stop_without_the_cancel_flag_lets_the_worker_requeue_its_run(executor_name, store, data):
    """What a server shutdown asks: the executor's stop reaches the worker itself,
    which gives its run back to the queue (no escalation: the grace is long)."""
    executor = make_executor(executor_name, data_dir=data.root, slots=1, grace_s=60.0, use_gpus=False)
    run = _train_run(store, epochs=50)
    executor.submit(store.claim_next())
    deadline = time.monotonic() + 60
    while not _worker_started(store, run.id):
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)
    assert executor.cancel(run.id)
    exited = []
    while not exited:
        assert time.monotonic() < deadline + 30, "the worker did not stop"
        exited = executor.poll()
        time.sleep(0.05)
    assert [(e.run_id, e.attempt) for e in exited] == [(run.id, 1)]
    assert store.get_run(run.id).state is RunState.QUEUED  # recorded by the worker, not the scheduler
    assert not executor.is_alive(run.id) and executor.free_slots() == 1
    executor.shutdown(1.0)


def _lose_worker(name: str, worker_pid: int) -> None:
    if name == "local":
        os.kill(worker_pid, signal.SIGKILL)  # no chance to requeue itself: the scheduler must
    else:
        os.kill(_parent_pid(worker_pid), signal.SIGKILL)  # the Ray worker running the task


def test_a_lost_worker_is_requeued_and_resumes_from_its_checkpoint(executor_name, executor, store):
    # 4 epochs: a Ray worker's training process can outlive its killed parent long
    # enough to checkpoint one more epoch, so the resume point is "after the first"
    run = _train_run(store, epochs=4)
    scheduler = Scheduler(store, executor)
    tick_until(scheduler, lambda: len(store.metrics(run.id)) >= 1, 120)  # epoch 1 checkpointed
    _lose_worker(executor_name, store.get_run(run.id).worker_pid)
    tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 180)
    done = store.get_run(run.id)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.attempt == 2 and 1 <= done.resumed_from_epoch < 4
    assert [r["epoch"] for r in store.metrics(run.id)] == [1, 2, 3, 4]  # none lost, none twice


def test_shutdown_gives_running_runs_back_to_the_queue(executor, store):
    kept, cancelled = _train_run(store, epochs=50), _train_run(store, epochs=50)
    scheduler = Scheduler(store, executor, grace_s=2.0)
    tick_until(scheduler, lambda: all(_worker_started(store, r.id) for r in (kept, cancelled)), 60)
    store.request_cancel(cancelled.id)
    asyncio.run(scheduler.stop())
    assert store.get_run(kept.id).state is RunState.QUEUED  # resumes on the next start
    assert store.get_run(cancelled.id).state is RunState.CANCELLED
    assert executor.free_slots() == 2 and not executor.is_alive(kept.id)


def test_make_executor_builds_both_and_names_the_choices(data, ray_instance):
    from jobs.executors.ray import RayExecutor

    assert isinstance(make_executor("local", data_dir=data.root), LocalExecutor)
    assert isinstance(make_executor("ray", data_dir=data.root), RayExecutor)
    with pytest.raises(ValueError, match="local, ray"):
        make_executor("slurm", data_dir=data.root)


class _RecordingRemote:
    """Stands in for the Ray remote function to see the resources a task asks for."""

    def __init__(self):
        self.calls = []

    def options(self, **options):
        self.calls.append(options)
        return self

    def remote(self, *args):
        return args


def test_a_cuda_run_asks_ray_for_one_gpu(data, store, ray_instance):
    from jobs.executors.ray import RayExecutor

    executor = RayExecutor(data.root, slots=2, threads_per_run=2)
    executor._remote = _RecordingRemote()
    for device in ("cuda", "cpu"):
        _train_run(store, device=device)
        executor.submit(store.claim_next())
    assert [(c["num_gpus"], c["num_cpus"]) for c in executor._remote.calls] == [(1, 2), (0, 2)]


def test_local_slots_spread_runs_over_gpus_then_share_them(data, store, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the server itself sees two of the box's GPUs
    executor = LocalExecutor(data.root, runs_per_gpu=2, python="true")
    assert executor.free_slots() == 4
    runs = [_train_run(store, device=device) for device in ("cuda", "cuda", "cuda:1", "cuda")]
    for run in runs:
        executor.submit(store.claim_next())
    gpus = [executor._workers[r.id].slot.cuda_device for r in runs]
    assert gpus == [0, 1, 1, 0] and executor.free_slots() == 0
    slot_of = {r.id: executor._workers[r.id].slot for r in runs}
    assert executor._env(slot_of[runs[1].id])["CUDA_VISIBLE_DEVICES"] == "6"
    # a run pinned to cuda:N sees what the server sees, so N names the GPU it asked for
    assert executor._env(slot_of[runs[2].id], pinned_gpu=1)["CUDA_VISIBLE_DEVICES"] == "4,6"
    executor.shutdown(1.0)


def test_a_remote_dispatch_issues_a_credential_for_that_attempt_only(data, store, ray_instance):
    """With a server URL, each dispatch hands the worker a new credential for its run and
    attempt (never the admin token, which the worker's environment drops) and no data path."""
    from jobs.executors.ray import RayExecutor

    executor = RayExecutor(data.root, slots=2, server_url="http://127.0.0.1:9", issue_credential=store.issue_credential)
    executor._remote = _RecordingRemote()
    run = _train_run(store, epochs=50)
    executor.submit(store.claim_next())
    target, run_id, attempt, _, _, env = executor._tasks[run.id].ref  # the recorded task arguments
    assert target == ["--server", "http://127.0.0.1:9"] and (run_id, attempt) == (run.id, 1)
    first = env["SPIKEBOARD_RUN_CREDENTIAL"]
    assert store.credential_attempt(run.id, first) == 1 and str(data.root) not in target
    store.requeue(run.id, 1)
    executor._tasks.pop(run.id)  # its task was collected (the recorded one is no real Ray task)
    executor.submit(store.claim_next())
    second = executor._tasks[run.id].ref[-1]["SPIKEBOARD_RUN_CREDENTIAL"]
    assert store.credential_attempt(run.id, second) == 2
    assert store.credential_attempt(run.id, first) is None  # the older attempt is locked out
    other = _train_run(store)
    assert store.credential_attempt(other.id, second) is None


def test_the_remote_worker_gets_no_admin_token(monkeypatch):
    from jobs.executors import ray as ray_executor

    seen = {}

    class Recorder:
        def __init__(self, argv, env, **kwargs):
            seen.update(argv=argv, env=env)

        def wait(self, timeout=None):
            return 0

    monkeypatch.setattr(ray_executor.subprocess, "Popen", Recorder)
    monkeypatch.setenv("SPIKEBOARD_TOKEN", "the-admin-token")
    assert ray_executor.supervise_worker(["--server", "http://127.0.0.1:9"], "r1", 1, 1, 1.0,
                                         {"SPIKEBOARD_RUN_CREDENTIAL": "c"}) == 0
    assert "SPIKEBOARD_TOKEN" not in seen["env"] and seen["env"]["SPIKEBOARD_RUN_CREDENTIAL"] == "c"
    assert seen["argv"][-4:] == ["--server", "http://127.0.0.1:9", "r1", "1"]


def test_ray_resources_come_from_the_run_config():
    from jobs.executors.ray import run_resources

    assert run_resources({"device": "cpu"}, 2) == {"num_cpus": 2, "num_gpus": 0}
    assert run_resources({"device": "cuda"}, 1) == {"num_cpus": 1, "num_gpus": 1}
    force = {"experiment": "sine", "params": {"config": {"device": "cuda:0"}}}
    assert run_resources(force, 1)["num_gpus"] == 1
