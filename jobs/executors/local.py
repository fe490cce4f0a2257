"""One subprocess per run, N slots; on a CUDA box one slot per GPU."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from jobs.executors.base import Exited
from jobs.models import Run
from jobs.worker import THREADS_ENV

log = logging.getLogger("jobs.executors.local")


@dataclass(frozen=True)
class Slot:
    index: int
    cuda_device: int | None  # None: a CPU slot


@dataclass
class _Worker:
    run_id: str
    attempt: int
    slot: Slot
    process: subprocess.Popen
    kill_at: float | None = field(default=None)


def detect_slots(cpu_slots: int) -> list[Slot]:
    """One slot per visible GPU where there are GPUs, else `cpu_slots` CPU slots.
    torch is imported here, lazily, so building the server does not pay for it."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return [Slot(i, i) for i in range(gpus)]
    return [Slot(i, None) for i in range(max(0, cpu_slots))]


class LocalExecutor:
    def __init__(self, data_dir: str | Path, *, slots: int = 1, threads_per_run: int = 1,
                 grace_s: float = 3.0, use_gpus: bool = True, python: str = sys.executable):
        self.data_dir = Path(data_dir)
        self.threads_per_run, self.grace_s, self.python = threads_per_run, grace_s, python
        self._cpu_slots, self._use_gpus = slots, use_gpus
        self._slots: list[Slot] | None = None
        self._workers: dict[str, _Worker] = {}

    def _all_slots(self) -> list[Slot]:
        if self._cpu_slots == 0:
            return []  # a queue-only server: runs wait for a server with slots
        if self._slots is None:
            self._slots = (detect_slots(self._cpu_slots) if self._use_gpus
                           else [Slot(i, None) for i in range(max(0, self._cpu_slots))])
        return self._slots

    def free_slots(self) -> int:
        return len(self._all_slots()) - len(self._workers)

    def submit(self, run: Run) -> None:
        busy = {w.slot.index for w in self._workers.values()}
        slot = next(s for s in self._all_slots() if s.index not in busy)
        process = subprocess.Popen(
            [self.python, "-m", "jobs.worker", str(self.data_dir), run.id, str(run.attempt)],
            env=self._env(slot), cwd=_repo_root(),
            # Own session: a Ctrl-C on the server's terminal must not kill workers
            # mid-write; they stop through SIGTERM (shutdown) or their parent-death signal.
            start_new_session=True)
        self._workers[run.id] = _Worker(run.id, run.attempt, slot, process)
        log.info("run %s attempt %d started as pid %d in slot %d", run.id, run.attempt, process.pid, slot.index)

    def _env(self, slot: Slot) -> dict[str, str]:
        env = dict(os.environ)
        threads = str(self.threads_per_run)
        env.update(OMP_NUM_THREADS=threads, MKL_NUM_THREADS=threads, **{THREADS_ENV: threads})
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_repo_root(), env.get("PYTHONPATH")) if p)
        if slot.cuda_device is not None:
            env["CUDA_VISIBLE_DEVICES"] = str(slot.cuda_device)
        return env

    def cancel(self, run_id: str) -> bool:
        worker = self._workers.get(run_id)
        if worker is None:
            return False
        _signal(worker.process, signal.SIGTERM)
        if worker.kill_at is None:
            worker.kill_at = time.monotonic() + self.grace_s
        return True

    def poll(self) -> list[Exited]:
        exited = []
        for worker in list(self._workers.values()):
            code = worker.process.poll()
            if code is not None:
                del self._workers[worker.run_id]
                exited.append(Exited(worker.run_id, worker.attempt, code))
            elif worker.kill_at is not None and time.monotonic() >= worker.kill_at:
                log.warning("run %s did not stop within %.1f s: SIGKILL", worker.run_id, self.grace_s)
                _signal(worker.process, signal.SIGKILL)
        return exited

    def is_alive(self, run_id: str) -> bool:
        worker = self._workers.get(run_id)
        return worker is not None and worker.process.poll() is None

    def shutdown(self, grace_s: float) -> list[Exited]:
        for run_id in list(self._workers):
            self.cancel(run_id)
        deadline = time.monotonic() + grace_s
        exited: list[Exited] = []
        while self._workers and time.monotonic() < deadline:
            exited += self.poll()
            time.sleep(0.05)
        for worker in self._workers.values():
            _signal(worker.process, signal.SIGKILL)
            exited.append(Exited(worker.run_id, worker.attempt, worker.process.wait()))
        self._workers.clear()
        return exited


def _signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass  # already gone


def _repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])
