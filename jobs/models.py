"""The run's vocabulary: states, kinds, the allowed transitions and the records."""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any


class RunState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in FINISHED_STATES


class RunKind(str, Enum):
    TRAIN = "train"
    ANALYSIS = "analysis"
    FORCE = "force"  # a FORCE experiment (engine.force); no source run


FINISHED_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED})

# The one table of allowed state changes. RUNNING -> QUEUED is the requeue of a
# run whose worker died with the server (it resumes from its checkpoint).
TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.QUEUED: frozenset({RunState.RUNNING, RunState.CANCELLED}),
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.QUEUED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset(),
    RunState.CANCELLED: frozenset(),
}


class JobsError(Exception):
    """Base of the errors the service layer raises on purpose."""


class RunNotFound(JobsError):
    def __init__(self, run_id: str):
        super().__init__(f"run {run_id} not found")
        self.run_id = run_id


class SweepNotFound(JobsError):
    def __init__(self, sweep_id: str):
        super().__init__(f"sweep {sweep_id} not found")
        self.sweep_id = sweep_id


class InvalidTransition(JobsError):
    def __init__(self, run_id: str, current: RunState, target: RunState):
        super().__init__(f"run {run_id} is {current.value}; it cannot become {target.value}")
        self.run_id, self.current, self.target = run_id, current, target


class Conflict(JobsError):
    """The request is valid but the run's state does not allow it now (HTTP 409)."""


class InvalidRequest(JobsError):
    """A request field is invalid; `field` names it (HTTP 422). `more` holds
    further (field, message) pairs, so one answer names every bad field;
    `location` is where the fields are: "body" or "query"."""

    def __init__(self, field: str, message: str, *, more: tuple[tuple[str, str], ...] = (),
                 location: str = "body"):
        super().__init__("; ".join(f"{f}: {m}" for f, m in ((field, message), *more)))
        self.field, self.message, self.more, self.location = field, message, tuple(more), location

    @property
    def errors(self) -> list[tuple[str, str]]:
        return [(self.field, self.message), *self.more]

    @property
    def prefix(self) -> tuple[str, ...]:
        return (self.location,)

    def under(self, prefix: str) -> "InvalidRequest":
        """The same errors with their fields placed under `prefix` (config.n_e)."""
        (field, message), *more = [(f"{prefix}.{f}", m) for f, m in self.errors]
        return InvalidRequest(field, message, more=tuple(more), location=self.location)


def check_transition(run_id: str, current: RunState, target: RunState) -> None:
    if target not in TRANSITIONS[current]:
        raise InvalidTransition(run_id, current, target)


@dataclass(frozen=True)
class Run:
    id: str
    kind: RunKind
    config: dict[str, Any]
    state: RunState
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float
    error: str | None
    code_version: str | None
    sweep_id: str | None
    source_run_id: str | None
    attempt: int
    heartbeat_at: float | None
    worker_pid: int | None
    cancel_requested: bool
    resumed_from_epoch: int | None
    n_epochs: int
    restarts: int = 0  # requeues by a server stop or restart: not counted as crashes
    priority: int = 0  # queued runs are served highest first, then oldest first (after resumed ones; jobs.schema)
    requeued_at: float | None = None  # when its user sent it back to the queue (jobs.schema)

    @property
    def queue_key(self) -> tuple:
        """Sorts queued runs in the order the store serves them (jobs.schema.QUEUE_ORDER)."""
        sent_back = self.requeued_at is not None
        queued_at = self.requeued_at if sent_back else self.created_at
        return self.attempt == 0 or sent_back, -self.priority, queued_at, self.id

    @property
    def crashes(self) -> int:
        """Attempts that ended for the run's own reasons (or are under way)."""
        return self.attempt - self.restarts

    @classmethod
    def from_row(cls, row: Any) -> "Run":
        return cls(
            id=row["id"], kind=RunKind(row["kind"]), config=json.loads(row["config"]),
            state=RunState(row["state"]), created_at=row["created_at"], started_at=row["started_at"],
            finished_at=row["finished_at"], progress=row["progress"], error=row["error"],
            code_version=row["code_version"], sweep_id=row["sweep_id"],
            source_run_id=row["source_run_id"], attempt=row["attempt"],
            heartbeat_at=row["heartbeat_at"], worker_pid=row["worker_pid"],
            cancel_requested=bool(row["cancel_requested"]),
            resumed_from_epoch=row["resumed_from_epoch"], n_epochs=row["n_epochs"],
            restarts=row["restarts"] if "restarts" in row.keys() else 0,
            priority=row["priority"] if "priority" in row.keys() else 0,
            requeued_at=row["requeued_at"] if "requeued_at" in row.keys() else None,
        )


@dataclass(frozen=True)
class Sweep:
    id: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    created_at: float
    run_ids: tuple[str, ...]
    child_states: tuple[RunState, ...]
    cancel_requested: bool

    @property
    def state(self) -> RunState:
        return sweep_state(self.child_states, self.cancel_requested)


def sweep_state(children: tuple[RunState, ...], cancel_requested: bool) -> RunState:
    """A sweep follows its children: running while any is unfinished, then
    failed if any failed, cancelled if any was cancelled, else succeeded."""
    if any(not s.finished for s in children):
        return RunState.RUNNING
    if RunState.FAILED in children:
        return RunState.FAILED
    if RunState.CANCELLED in children or cancel_requested:
        return RunState.CANCELLED
    return RunState.SUCCEEDED


@dataclass(frozen=True)
class QueueStatus:
    """The queue as a whole: paused (since when) or serving, and what it holds."""
    paused_at: float | None
    queued: int
    running: int

    @property
    def paused(self) -> bool:
        return self.paused_at is not None
