"""The scheduler: one asyncio task in the server that starts queued runs when a
slot is free, settles workers that ended, and requeues runs whose worker is gone.

With `pack_runs` > 1 and an executor that runs packs (the local one), a free slot
takes the oldest queued run together with up to pack_runs - 1 compatible queued
runs (jobs.packing: fast-backend GPU training runs of one shape and schedule), and
one worker trains them in lockstep (engine.packed). Every run keeps its own store
row, attempt, heartbeat and outcome, so each is settled, cancelled and resumed
on its own."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from jobs.executors.base import Executor, Exited
from jobs.models import Conflict, InvalidTransition, RunKind, RunState
from jobs.packing import PACK_DEVICES, claim_pack
from jobs.store import RunStore

log = logging.getLogger("jobs.scheduler")


def pid_alive(pid: int | None) -> bool:
    """True if `pid` is a live (not zombie) process on this machine."""
    if not pid:
        return False
    stat = Path(f"/proc/{pid}/stat")
    try:
        # the state letter follows the parenthesised command name
        return stat.read_text().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, IndexError):
        return False


class Scheduler:
    """Starts the oldest queued run whenever `executor` has a free slot. `reserved`,
    if given, is a second executor that only starts runs of `reserved_kinds`
    (analyses: inference of minutes), so that a researcher's analysis of a run does
    not wait behind hours of queued training; it also takes them when the shared
    slots are full, never training."""

    def __init__(self, store: RunStore, executor: Executor, *, tick_s: float = 0.25,
                 stale_after_s: float = 30.0, grace_s: float = 3.0, max_attempts: int = 3,
                 pack_runs: int = 1, pack_devices: tuple[str, ...] = PACK_DEVICES,
                 reserved: Executor | None = None, reserved_kinds: frozenset[RunKind] = frozenset({RunKind.ANALYSIS})):
        self.store, self.executor, self.max_attempts = store, executor, max_attempts
        # runs per job at most; packs need an executor that starts one worker for several runs
        self.pack_runs = pack_runs if hasattr(executor, "submit_pack") else 1
        self.pack_devices = pack_devices
        self.reserved, self.reserved_kinds = reserved, reserved_kinds
        self.executors: tuple[Executor, ...] = (executor,) if reserved is None else (executor, reserved)
        self.tick_s, self.stale_after_s, self.grace_s = tick_s, stale_after_s, grace_s
        self._task: asyncio.Task | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def recover(self) -> list[str]:
        """At start: runs left `running` by a previous server whose worker is dead
        go back to the queue at once (they resume from their checkpoint); runs
        with a live orphan worker are left to it, or to the heartbeat reaper."""
        requeued = []
        for run in self._running():
            if not self.is_alive(run.id) and not pid_alive(run.worker_pid):
                if self.store.requeue(run.id, run.attempt, restart=True):
                    requeued.append(run.id)
        if requeued:
            log.info("requeued %d run(s) left running by a previous server: %s", len(requeued), requeued)
        return requeued

    def _running(self):
        runs, _ = self.store.list_runs(state=RunState.RUNNING, limit=10_000)
        return runs

    def tick(self, now: float | None = None) -> None:
        now = time.time() if now is None else now
        for executor in self.executors:
            for exited in executor.poll():
                self.settle(exited)
        for run_id in self.store.reap_stale(now, self.stale_after_s):
            log.warning("run %s: heartbeat lapsed, requeued", run_id)
        # the reserved slot first: an analysis takes its own slot before a general one
        if self.reserved is not None:
            self._start_queued(self.reserved, self.reserved_kinds, now)
        self._start_queued(self.executor, None, now)

    def _start_queued(self, executor: Executor, kinds: frozenset[RunKind] | None, now: float) -> None:
        while executor.free_slots() > 0:
            run = self.store.claim_next(now, kinds)
            if run is None:
                break
            # training packs share the main executor's slots; the reserved one runs analyses
            pack = claim_pack(self.store, run, self.pack_runs, self.pack_devices, now) \
                if executor is self.executor else [run]
            try:
                if len(pack) > 1:
                    executor.submit_pack(pack)
                else:
                    executor.submit(run)
            except OSError as exc:
                for claimed in pack:
                    self.store.transition(claimed.id, RunState.FAILED, error=f"could not start worker: {exc}")

    def is_alive(self, run_id: str) -> bool:
        return any(executor.is_alive(run_id) for executor in self.executors)

    def settle(self, exited: Exited) -> None:
        """A worker ended. If it did not record an outcome itself (killed, crashed),
        record one: cancelled if that was asked for; else requeued to resume from
        its checkpoint, until `max_attempts` crashes make it failed."""
        run = self.store.get_run(exited.run_id)
        if run.state is not RunState.RUNNING or run.attempt != exited.attempt:
            return
        if run.cancel_requested:
            target, error = RunState.CANCELLED, None
        elif run.requeued_at is not None:  # sent back to the queue, and its worker had to be killed: not a crash
            self.store.requeue(run.id, run.attempt, restart=True)
            return
        elif run.crashes < self.max_attempts:
            log.warning("run %s: worker exited with code %d; requeued", run.id, exited.returncode)
            self.store.requeue(run.id, run.attempt)
            return
        else:
            target, error = RunState.FAILED, (f"worker exited with code {exited.returncode} without a "
                                              f"result (crash {run.crashes} of {self.max_attempts})")
        try:
            self.store.transition(run.id, target, error=error, attempt=exited.attempt)
        except (Conflict, InvalidTransition) as exc:
            log.info("run %s moved on: %s", run.id, exc)

    def cancel(self, run_id: str) -> None:
        """Signal the run's worker. Safe from any thread: the executor is only ever
        touched from the scheduler's loop, so request threads hand the call over."""
        for executor in self.executors:
            if self._loop is not None and self._loop.is_running():
                self._loop.call_soon_threadsafe(executor.cancel, run_id)
            else:
                executor.cancel(run_id)

    async def _run_forever(self) -> None:
        while True:
            try:
                self.tick()
            except Exception:  # a bad tick must not stop scheduling for good
                log.exception("scheduler tick failed")
            await asyncio.sleep(self.tick_s)

    def start(self) -> None:
        self.recover()
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run_forever(), name="scheduler")

    async def stop(self) -> None:
        """Server shutdown: workers get SIGTERM and give their runs back to the
        queue; any that had to be killed are requeued here, to resume next start."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for exited in [e for executor in self.executors for e in executor.shutdown(self.grace_s)]:
            run = self.store.get_run(exited.run_id)
            if run.state is RunState.RUNNING and run.cancel_requested:
                self.settle(exited)
            else:
                self.store.requeue(exited.run_id, exited.attempt, restart=True)
