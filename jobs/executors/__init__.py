"""Executors start and stop worker processes; the store stays the source of truth.

`LocalExecutor` runs one subprocess per run. A Ray executor would implement the
same `Executor` protocol (submit / cancel / poll / is_alive / free_slots /
shutdown), import ray lazily, and launch `jobs.worker.main` as a remote task;
it is not written yet, and `make_executor` refuses the name rather than pretend.
"""

from __future__ import annotations

from jobs.executors.base import Executor, Exited
from jobs.executors.local import LocalExecutor

__all__ = ["Executor", "Exited", "LocalExecutor", "make_executor"]


def make_executor(name: str, **options) -> Executor:
    if name == "local":
        return LocalExecutor(**options)
    raise ValueError(f"executor {name!r} is not available (only 'local'; a Ray executor is planned)")
