"""One subprocess per job, N slots; on a CUDA box `runs_per_gpu` slots per GPU.

A job is one run, or a pack of compatible runs (jobs.packing) that one worker
trains in lockstep (engine.packed): one process and one slot, each run its own
entry here, so the scheduler settles every run of a pack on its own."""

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
from jobs.executors.launch import cuda_index, repo_root, worker_argv, worker_env
from jobs.models import Run

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
    packed: bool = False  # one of several runs of the process


def detect_slots(cpu_slots: int, runs_per_gpu: int = 1) -> list[Slot]:
    """`runs_per_gpu` slots per visible GPU where there are GPUs (several small
    runs share a GPU when its memory holds them: the operator's call, from the
    peak memory `spikeboard bench --device cuda` reports), else `cpu_slots` CPU
    slots. torch is imported here, lazily, so building the server does not pay for it."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus:
        return [Slot(i, i // runs_per_gpu) for i in range(gpus * runs_per_gpu)]
    return [Slot(i, None) for i in range(max(0, cpu_slots))]


class LocalExecutor:
    def __init__(self, data_dir: str | Path, *, slots: int = 1, threads_per_run: int = 1,
                 grace_s: float = 3.0, use_gpus: bool = True, runs_per_gpu: int = 1,
                 python: str = sys.executable):
        self.data_dir = Path(data_dir)
        self.threads_per_run, self.grace_s, self.python = threads_per_run, grace_s, python
        self._cpu_slots, self._use_gpus, self._runs_per_gpu = slots, use_gpus, runs_per_gpu
        self._slots: list[Slot] | None = None
        self._workers: dict[str, _Worker] = {}

    def _all_slots(self) -> list[Slot]:
        if self._cpu_slots == 0:
            return []  # a queue-only server: runs wait for a server with slots
        if self._slots is None:
            self._slots = (detect_slots(self._cpu_slots, self._runs_per_gpu) if self._use_gpus
                           else [Slot(i, None) for i in range(max(0, self._cpu_slots))])
        return self._slots

    def free_slots(self) -> int:
        return len(self._all_slots()) - len({w.slot for w in self._workers.values()})

    def submit(self, run: Run) -> None:
        self.submit_pack([run])

    def submit_pack(self, runs: list[Run]) -> None:
        """One worker process for the runs (claimed, running) of a pack, in one slot."""
        pinned = cuda_index(runs[0].config)
        slot = self._pick_slot(pinned)
        process = subprocess.Popen(
            worker_argv(self.python, self.data_dir, *((run.id, run.attempt) for run in runs)),
            env=self._env(slot, pinned), cwd=repo_root(),
            # Own session: a Ctrl-C on the server's terminal must not kill workers
            # mid-write; they stop through SIGTERM (shutdown) or their parent-death signal.
            start_new_session=True)
        for run in runs:
            self._workers[run.id] = _Worker(run.id, run.attempt, slot, process, packed=len(runs) > 1)
        log.info("run(s) %s started as pid %d in slot %d", ", ".join(f"{r.id} attempt {r.attempt}" for r in runs),
                 process.pid, slot.index)

    def _pick_slot(self, pinned_gpu: int | None) -> Slot:
        """A free slot on the GPU running the fewest runs, so runs spread over the
        GPUs before they share one. A run pinned to "cuda:N" takes a slot of GPU N
        when one is free; if none is, it takes another slot and still runs on GPU N
        (so servers should ask for "cuda" and let the executor place runs)."""
        busy = [w.slot for w in self._workers.values()]
        free = [s for s in self._all_slots() if s not in busy]
        on_pinned = [s for s in free if pinned_gpu is not None and s.cuda_device == pinned_gpu]
        return (on_pinned or sorted(free, key=lambda s: sum(b.cuda_device == s.cuda_device for b in busy)))[0]

    def _env(self, slot: Slot, pinned_gpu: int | None = None) -> dict[str, str]:
        env = worker_env(os.environ, self.threads_per_run)
        # "cuda" means cuda:0 of what the worker sees: show it its slot's GPU only.
        # A run pinned to "cuda:N" keeps the server's view, so that N is the GPU it named.
        if slot.cuda_device is not None and pinned_gpu is None:
            # slot GPUs index what the server sees, which may itself be masked
            visible = os.environ.get("CUDA_VISIBLE_DEVICES")
            env["CUDA_VISIBLE_DEVICES"] = (visible.split(",")[slot.cuda_device] if visible
                                           else str(slot.cuda_device))
        return env

    def cancel(self, run_id: str) -> bool:
        """A run alone: SIGTERM, SIGKILL after the grace. A run of a pack: its worker
        sees the cancel flag at the run's next heartbeat and stops that run only."""
        worker = self._workers.get(run_id)
        if worker is None:
            return False
        if not worker.packed:
            self._terminate(worker)
        return True

    def _terminate(self, worker: _Worker) -> None:
        _signal(worker.process, signal.SIGTERM)
        if worker.kill_at is None:
            worker.kill_at = time.monotonic() + self.grace_s

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
        for worker in list(self._workers.values()):
            self._terminate(worker)
        deadline = time.monotonic() + grace_s
        exited: list[Exited] = []
        while self._workers and time.monotonic() < deadline:
            exited += self.poll()
            time.sleep(0.05)
        for worker in self._workers.values():  # a pack's process once per run: harmless
            _signal(worker.process, signal.SIGKILL)
            exited.append(Exited(worker.run_id, worker.attempt, worker.process.wait()))
        self._workers.clear()
        return exited


def _signal(process: subprocess.Popen, signum: int) -> None:
    try:
        process.send_signal(signum)
    except ProcessLookupError:
        pass  # already gone
