"""The GPU path, end to end: a run whose config asks for "cuda" trains on a GPU
through each executor, several small runs share a GPU, and a cancelled run's
GPU memory is released (its worker process is gone from the GPU). Needs CUDA;
skipped without it."""

import shutil
import subprocess
import time

import pytest
import torch

import engine
from jobs.executors import LocalExecutor
from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.scheduler import Scheduler, pid_alive
from jobs.store import RunStore

from tests.conftest import small_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (no GPU visible)")]


def gpu_pids() -> set[int]:
    """Processes holding memory on any GPU, as the driver reports them."""
    if shutil.which("nvidia-smi") is None:
        pytest.skip("nvidia-smi is missing: cannot see which processes hold GPU memory")
    out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return {int(line) for line in out.split() if line.strip().isdigit()}


@pytest.fixture
def data(tmp_path):
    return DataDir.at(tmp_path / "data")


@pytest.fixture
def store(data):
    store = RunStore(data.db_path)
    yield store
    store.close()


def _cuda_run(store, **overrides):
    config = engine.Config.from_dict(small_config(device="cuda", **overrides)).to_dict()
    return store.create_run(RunKind.TRAIN, config)


def _tick_until(scheduler, predicate, timeout_s):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        scheduler.tick()
        time.sleep(0.2)


def _on_gpu(store, run_id) -> bool:
    pid = store.get_run(run_id).worker_pid
    return pid is not None and pid in gpu_pids()


def test_a_cuda_run_trains_on_a_gpu_then_cancel_releases_its_memory(data, store):
    executor = LocalExecutor(data.root)
    scheduler = Scheduler(store, executor, grace_s=2.0)
    assert executor.free_slots() == torch.cuda.device_count()  # one slot per GPU
    run = _cuda_run(store, epochs=50)
    _tick_until(scheduler, lambda: _on_gpu(store, run.id), 120)
    _tick_until(scheduler, lambda: len(store.metrics(run.id)) >= 1, 120)
    pid = store.get_run(run.id).worker_pid
    store.request_cancel(run.id)
    executor.cancel(run.id)
    _tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 30)
    assert store.get_run(run.id).state is RunState.CANCELLED
    _tick_until(scheduler, lambda: not pid_alive(pid) and pid not in gpu_pids(), 30)
    executor.shutdown(2.0)


def test_several_small_runs_share_one_gpu(data, store):
    executor = LocalExecutor(data.root, runs_per_gpu=2)
    scheduler = Scheduler(store, executor)
    # pinned to GPU 0, so both land on one GPU however many the machine has
    runs = [store.create_run(RunKind.TRAIN, engine.Config.from_dict(
        small_config(device="cuda:0", epochs=3, seed=seed)).to_dict()) for seed in (1, 2)]
    _tick_until(scheduler, lambda: all(_on_gpu(store, r.id) for r in runs), 120)
    _tick_until(scheduler, lambda: all(store.get_run(r.id).state.finished for r in runs), 300)
    for run in runs:
        done = store.get_run(run.id)
        assert done.state is RunState.SUCCEEDED, done.error
        assert [m["epoch"] for m in store.metrics(run.id)] == [1, 2, 3]
    executor.shutdown(2.0)


def test_a_cuda_run_gets_a_gpu_from_ray(data, store):
    ray = pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
    from jobs.executors.ray import RayExecutor

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, object_store_memory=100 * 2**20)
    try:
        executor = RayExecutor(data.root, slots=1)
        scheduler = Scheduler(store, executor)
        run = _cuda_run(store)
        _tick_until(scheduler, lambda: _on_gpu(store, run.id), 120)
        _tick_until(scheduler, lambda: store.get_run(run.id).state.finished, 300)
        done = store.get_run(run.id)
        assert done.state is RunState.SUCCEEDED, done.error
        executor.shutdown(2.0)
    finally:
        ray.shutdown()
