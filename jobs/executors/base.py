"""The one protocol every executor implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from jobs.models import Run


@dataclass(frozen=True)
class Exited:
    """A worker that ended since the last poll, and how."""
    run_id: str
    attempt: int
    returncode: int


class Executor(Protocol):
    def free_slots(self) -> int:
        """How many more runs can start now."""

    def submit(self, run: Run) -> None:
        """Start the worker for a claimed (running) run."""

    def cancel(self, run_id: str) -> bool:
        """Ask the run's worker to stop (SIGTERM), and make sure it is gone after a
        grace period (SIGKILL). False if this executor has no worker for it."""

    def poll(self) -> list[Exited]:
        """Workers that ended since the last call; escalates overdue stops."""

    def is_alive(self, run_id: str) -> bool:
        """Whether this executor has a live worker for the run."""

    def shutdown(self, grace_s: float) -> list[Exited]:
        """Stop every worker (SIGTERM, then SIGKILL after grace_s); wait for them."""
