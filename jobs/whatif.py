"""What-if inferences inside the server process, for the REST endpoint and the page.

`WhatIfService.compute(run_id, knobs)` runs `engine.whatif.what_if` on a train
run's weights (final ones once it has succeeded, else its last checkpoint). The
weights and the test split stay cached between calls (a slider drag asks for
the same run dozens of times).

CPU share. What-ifs run in the server process, training runs in worker processes
of `threads_per_run` torch threads each. Two limits keep a few open tabs from
starving training:
- a global cap: at most `slots` what-ifs at a time, with `slots` the cores that
  the configured training slots leave (`workers * threads_per_run`), at least 1;
- per what-if, threads = the cores that the runs *running now* leave, divided
  by `slots`, at least 1 (so on 2 cores with one training run going, a what-if
  uses one core; with none, both): `engine.whatif.what_if` simulates its images
  over that many threads (the compiled loop releases the GIL), every torch op on
  one thread. What-ifs always run on the CPU: a GPU stays with the runs the
  scheduler placed on it.

Huge pages. A what-if once wrote 17 images' spike trains, [2000, 17, 1000]
float32 (136 MB), into fresh memory on every call, at a page fault per 4 KiB
page (0.3 s or more on this 2-core VM); the compiled loop now keeps only the
picked image's (8 MB, `engine.fast.cpu.run_summary`), but the fresh buffers of
each call are still faulted in. `use_huge_pages` has torch back the server
process's large CPU tensors with transparent huge pages (2 MiB, one fault each).

`Latest` is the per-session rule: one inference in flight per session, and a
request made while one runs replaces any older waiting one, so a drag never
queues stale frames; the running one finishes (a compiled loop is not
interruptible) but its result is dropped unless it is still the newest.
"""

from __future__ import annotations

import asyncio
import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import torch

from engine.config import ConfigError
from engine.stability import EulerCheck
from engine.whatif import Knobs, WhatIfResult, euler_check, what_if
from jobs.models import Conflict, InvalidRequest, RunKind, RunState
from jobs.service import JobService

CACHED_RUNS = 4


HUGE_PAGES_ENV = "THP_MEM_ALLOC_ENABLE"  # torch (c10/core/alloc_cpu.cpp): madvise(MADV_HUGEPAGE) on >= 2 MiB


def use_huge_pages() -> None:
    """Back this process's large torch CPU tensors with transparent huge pages.

    torch reads THP_MEM_ALLOC_ENABLE once, at the first allocation of 2 MiB or
    more, so this must run before any (the server calls it when it builds its
    what-if service; later it changes nothing). The variable is removed again
    unless it was set before: the training workers, subprocesses of the server,
    keep their own memory behaviour. A kernel with THP off ("never") ignores it.
    """
    if HUGE_PAGES_ENV in os.environ:
        return  # the operator's choice, inherited by the workers as they set it
    os.environ[HUGE_PAGES_ENV] = "1"
    try:
        torch.empty(4 << 20, dtype=torch.uint8)  # the first large allocation: torch reads the variable
    finally:
        del os.environ[HUGE_PAGES_ENV]


class Busy(Conflict):
    """Every what-if slot stayed taken for the whole wait."""


def slots_for(cores: int, workers: int, threads_per_run: int) -> int:
    """What-ifs at a time: the cores the training slots leave, at least one."""
    return max(1, cores - workers * threads_per_run)


class WhatIfService:
    def __init__(self, jobs: JobService, *, workers: int, threads_per_run: int, cores: int | None = None):
        self.jobs = jobs
        self.cores = cores or os.cpu_count() or 1
        self.threads_per_run = threads_per_run
        self.slots = slots_for(self.cores, workers, threads_per_run)
        self._slots = threading.BoundedSemaphore(self.slots)
        self._cache: OrderedDict[tuple, tuple] = OrderedDict()
        self._cache_lock = threading.Lock()
        use_huge_pages()

    # --- inputs ----------------------------------------------------------------------
    def _weights_file(self, run_id: str) -> tuple[str, float]:
        run = self.jobs.get_run(run_id)
        if run.kind is not RunKind.TRAIN:
            raise Conflict(f"run {run_id} is a {run.kind.value} run; a what-if needs a train run")
        run_dir = self.jobs.data.run_dir(run_id)
        for name, path in (("final", run_dir / "artifacts" / "weights_final.npz"),
                           ("last", run_dir / "checkpoints" / "last.pt")):
            if path.exists():
                return name, path.stat().st_mtime
        raise Conflict(f"run {run_id} has no weights yet (no finished epoch)")

    def network(self, run_id: str):
        """(config, weights, test split) of a run, cached until its weights file changes."""
        return self._entry(run_id)[:3]

    def weights_source(self, run_id: str) -> tuple[str, int | None]:
        """Which weights a what-if of this run simulates: ("final" or "last", the epoch they
        are from). A run still training answers with its latest checkpoint, which moves on."""
        return self._entry(run_id)[3]

    def _entry(self, run_id: str) -> tuple:
        from engine.data import load_tier
        from engine.inspect import load_run_at

        weights, mtime = self._weights_file(run_id)
        key = (run_id, weights, mtime)
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        try:
            config, w, epoch = load_run_at(self.jobs.data.run_dir(run_id), weights)
            config = config.replace(device="cpu")
            entry = (config, {k: v.cpu() for k, v in w.items()}, load_tier(config.tier).test, (weights, epoch))
        except (OSError, RuntimeError, ValueError, KeyError) as exc:  # unreadable files, tier unavailable
            raise Conflict(f"run {run_id} cannot be simulated here: {exc}") from exc
        with self._cache_lock:
            self._cache[key] = entry
            while len(self._cache) > CACHED_RUNS:
                self._cache.popitem(last=False)
        return entry

    def threads(self) -> int:
        """Torch threads for one what-if now: the cores running training leaves, per slot."""
        running = self.jobs.store.list_runs(state=RunState.RUNNING, kind=RunKind.TRAIN, limit=1)[1]
        return max(1, (self.cores - running * self.threads_per_run) // self.slots)

    # --- the computation -------------------------------------------------------------
    def compute(self, run_id: str, knobs: Knobs, wait_s: float | None = None) -> WhatIfResult:
        """One what-if, inside the global cap (waits up to `wait_s` for a slot; None: as long as it takes)."""
        config, weights, test = self.network(run_id)
        if not self._slots.acquire(timeout=wait_s):
            raise Busy(f"all {self.slots} what-if slots are busy; try again")
        try:
            return what_if(weights, config, test, knobs, threads=self.threads())
        except ConfigError as exc:
            raise InvalidRequest(exc.field, exc.message) from exc
        finally:
            self._slots.release()


    def euler_check(self, run_id: str, knobs: Knobs, wait_s: float | None = None,
                    should_stop: Callable[[], bool] | None = None) -> EulerCheck | None:
        """Forward Euler's step factor at `knobs` on the picked image (engine.whatif.euler_check),
        inside the same cap as `compute`."""
        config, weights, test = self.network(run_id)
        if not self._slots.acquire(timeout=wait_s):
            raise Busy(f"all {self.slots} what-if slots are busy; try again")
        try:
            return euler_check(weights, config, test, knobs, threads=self.threads(), should_stop=should_stop)
        except ConfigError as exc:
            raise InvalidRequest(exc.field, exc.message) from exc
        finally:
            self._slots.release()


def knobs_of(values: dict[str, Any]) -> Knobs:
    """Knobs from plain values; a bad one is an InvalidRequest naming its field."""
    try:
        return Knobs(**values)
    except ConfigError as exc:
        raise InvalidRequest(exc.field, exc.message) from exc


class Latest:
    """One computation in flight; a request made meanwhile supersedes any older waiting one.

    `request(args)` returns at once if a computation is running (the newest waiting
    request runs after it); otherwise it runs `compute(args)` in a thread, then
    each newer request in turn, and hands `deliver` only the results of requests
    that were still the newest when they finished. Use from one event loop.
    """

    def __init__(self, compute: Callable[[Any], Any], deliver: Callable[[Any, Any], Awaitable[None] | None]):
        self._compute, self._deliver = compute, deliver
        self._waiting: tuple | None = None
        self.running = False
        self.superseded = 0  # results dropped because a newer request came in while they ran

    async def request(self, args: Any) -> None:
        self._waiting = (args,)
        if self.running:
            return
        self.running = True
        try:
            while self._waiting is not None:
                (current,), self._waiting = self._waiting, None
                try:
                    result = await asyncio.to_thread(functools.partial(self._compute, current))
                except Exception as exc:  # noqa: BLE001 - handed to deliver, which reports it
                    result = exc
                if self._waiting is not None:
                    self.superseded += 1
                    continue
                delivered = self._deliver(current, result)
                if asyncio.iscoroutine(delivered):
                    await delivered
        finally:
            self.running = False
