"""Each run as a Ray task, behind the same `Executor` protocol as the local one.

The task is a small supervisor around the very worker the local executor starts
(`python -m jobs.worker ...`, a child process), so a run behaves the same under
both. A child process, rather than the worker running inside the Ray worker,
because Ray reuses its worker processes: the child's exit is what frees a run's
GPU memory, and a cancelled task can stop it.

With `server_url` (what `spikeboard serve --executor ray` uses) the worker
reports over the server's API (jobs.transport.HttpTransport) with a credential
issued for this run's attempt at dispatch, so a task runs on any node of the
cluster: no shared disk, no database file. The task asks Ray for the run's
resources (its threads as CPUs, one GPU when its config says cuda) and Ray
places it on any node with room. A node that dies takes the task with it: Ray
reports it lost, or its heartbeat lapses, and the scheduler requeues the run,
which resumes from the last checkpoint the server holds.

Without `server_url` the worker opens the store by path (same host only: the
store is SQLite in WAL mode, which needs all its processes on one host).

ray is imported when the executor is built, never at module import, so the
server does not need it unless `--executor ray` is asked for.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from jobs.executors.base import Exited
from jobs.executors.launch import repo_root, wants_gpu, worker_env
from jobs.models import Run, RunNotFound, RunState
from jobs.paths import DataDir
from jobs.store import RunStore
from jobs.transport import CREDENTIAL_ENV

log = logging.getLogger("jobs.executors.ray")

# Exit codes for tasks that returned none: cancelled before or while running,
# and lost (the Ray worker or its node died, or the supervisor itself failed).
CANCELLED_CODE = -signal.SIGTERM
LOST_CODE = -signal.SIGKILL
ADMIN_TOKEN_ENV = "SPIKEBOARD_TOKEN"
INSTALL_HINT = "the Ray executor needs ray: pip install 'spikeboard[ray]'"


def supervise_worker(target: list[str], run_id: str, attempt: int, threads: int, grace_s: float,
                     extra_env: dict[str, str] | None = None) -> int:
    """The body of a run's Ray task: start the worker, wait for it, return its
    exit code. `target` is [DATA_DIR] or ["--server", URL] (jobs.worker's argv).
    ray.cancel raises KeyboardInterrupt here: the worker then gets SIGTERM (it
    records `cancelled` or requeues) and SIGKILL after `grace_s`. If this process
    is killed instead, the worker's parent-death signal stops it."""
    env = worker_env(os.environ, threads)  # Ray has set CUDA_VISIBLE_DEVICES for a GPU task
    if target[:1] == ["--server"]:
        env.pop(ADMIN_TOKEN_ENV, None)  # a remote worker holds its run's credential, never the admin token
    env.update(extra_env or {})
    argv = [sys.executable, "-m", "jobs.worker", *target, run_id, str(attempt)]
    process = subprocess.Popen(argv, env=env, cwd=repo_root(), start_new_session=True)
    try:
        while True:
            try:
                # wait in short rounds: ray.cancel's KeyboardInterrupt is raised
                # between Python bytecodes, never inside one long blocking wait
                return process.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                continue
    except BaseException:
        process.terminate()
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        raise


def run_resources(config: dict[str, Any], threads_per_run: int) -> dict[str, Any]:
    """The Ray resources a run asks for: its torch threads as CPUs, and one GPU
    when its config runs on CUDA (a FORCE experiment's network config included)."""
    return {"num_cpus": threads_per_run, "num_gpus": 1 if wants_gpu(config) else 0}


@dataclass
class _Task:
    run_id: str
    attempt: int
    ref: Any  # ray.ObjectRef
    kill_at: float | None = field(default=None)


class RayExecutor:
    def __init__(self, data_dir: str | Path, *, address: str | None = None, slots: int = 1,
                 threads_per_run: int = 1, grace_s: float = 3.0, server_url: str | None = None,
                 issue_credential: Callable[[str, int], str] | None = None):
        try:
            import ray
        except ImportError as exc:
            raise RuntimeError(INSTALL_HINT) from exc
        self._ray = ray
        self.data_dir = Path(data_dir).resolve()
        self.slots, self.threads_per_run, self.grace_s = slots, threads_per_run, grace_s
        if server_url is not None and issue_credential is None:
            raise ValueError("workers reporting to a server need issue_credential")
        self.server_url, self._issue_credential = server_url, issue_credential
        # Connect unless the process already is (a test's ray.init); address None
        # starts a Ray instance on this machine, "auto" joins the one `ray start` runs.
        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            ray.init(address=address, include_dashboard=False)
        # Ray must not retry on its own: the scheduler requeues with a new attempt,
        # and the store's attempt check is what keeps two workers off one run.
        self._remote = ray.remote(max_retries=0)(supervise_worker)
        self._tasks: dict[str, _Task] = {}
        self._store: RunStore | None = None  # opened on the first cancel

    def free_slots(self) -> int:
        return self.slots - len(self._tasks)

    def submit(self, run: Run) -> None:
        stale = self._tasks.pop(run.id, None)
        if stale is not None:  # a requeued run whose old task Ray never started
            self._ray.cancel(stale.ref, force=False)
        options = run_resources(run.config, self.threads_per_run)
        options["name"] = f"spikeboard-run-{run.id}-{run.attempt}"
        if self.server_url is not None:
            # issued now, for this attempt only: a worker of an older attempt is locked out
            target = ["--server", self.server_url]
            extra_env = {CREDENTIAL_ENV: self._issue_credential(run.id, run.attempt)}
        else:
            target, extra_env = [str(self.data_dir)], {}
        ref = self._remote.options(**options).remote(target, run.id, run.attempt, self.threads_per_run,
                                                     self.grace_s, extra_env)
        self._tasks[run.id] = _Task(run.id, run.attempt, ref)
        log.info("run %s attempt %d submitted to Ray (%s)", run.id, run.attempt, options)

    def cancel(self, run_id: str) -> bool:
        task = self._tasks.get(run_id)
        if task is None:
            return False
        self._ray.cancel(task.ref, force=False)
        # ray.cancel's KeyboardInterrupt is best effort (in CI it sometimes never
        # arrived). A remote worker also learns of a cancel from its heartbeat's
        # answer; a same-host one is told directly. Either records its own
        # outcome, and its exit ends the task.
        if self.server_url is None:
            self._terminate_worker(task)
        if task.kill_at is None:
            task.kill_at = time.monotonic() + self.grace_s
        return True

    def _terminate_worker(self, task: _Task) -> None:
        if self._store is None:
            self._store = RunStore(DataDir.at(self.data_dir).db_path)
        try:
            run = self._store.get_run(task.run_id)
        except RunNotFound:
            return
        if run.worker_pid and run.attempt == task.attempt and run.state is RunState.RUNNING:
            try:
                os.kill(run.worker_pid, signal.SIGTERM)
            except ProcessLookupError:
                pass  # already gone

    def poll(self) -> list[Exited]:
        ready = self._ready()
        exited = [self._collect(task) for task in list(self._tasks.values()) if task.ref in ready]
        for task in self._tasks.values():
            if task.kill_at is not None and time.monotonic() >= task.kill_at:
                log.warning("run %s did not stop within %.1f s: force-cancelling its Ray task",
                            task.run_id, self.grace_s)
                self._ray.cancel(task.ref, force=True)
                task.kill_at = float("inf")  # once
        return exited

    def _ready(self) -> set:
        refs = [task.ref for task in self._tasks.values()]
        if not refs:
            return set()
        ready, _ = self._ray.wait(refs, num_returns=len(refs), timeout=0)
        return set(ready)

    def _collect(self, task: _Task) -> Exited:
        del self._tasks[task.run_id]
        exceptions = self._ray.exceptions
        try:
            code = self._ray.get(task.ref)
        except exceptions.TaskCancelledError:
            code = CANCELLED_CODE
        except exceptions.RayError as exc:
            log.warning("run %s attempt %d: Ray task lost: %s", task.run_id, task.attempt,
                        str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            code = LOST_CODE
        return Exited(task.run_id, task.attempt, code)

    def is_alive(self, run_id: str) -> bool:
        task = self._tasks.get(run_id)
        return task is not None and task.ref not in self._ready()

    def shutdown(self, grace_s: float) -> list[Exited]:
        for run_id in list(self._tasks):
            self.cancel(run_id)
        deadline = time.monotonic() + grace_s
        exited: list[Exited] = []
        while self._tasks and time.monotonic() < deadline:
            exited += self.poll()
            time.sleep(0.05)
        for task in list(self._tasks.values()):
            self._ray.cancel(task.ref, force=True)
            exited.append(Exited(task.run_id, task.attempt, LOST_CODE))
        self._tasks.clear()
        if self._owns_ray:
            self._ray.shutdown()
        if self._store is not None:
            self._store.close()
        return exited
