"""A study as a durable record: its plan and its member runs (see jobs/schema.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from jobs.models import RunNotFound, RunState, sweep_state


class StudyNotFound(RunNotFound):
    """Answered as 404 like an unknown run."""

    def __init__(self, study_id: str):
        super().__init__(study_id)
        self.args = (f"study {study_id} not found",)
        self.study_id = study_id


@dataclass(frozen=True)
class StudyMember:
    run_id: str
    label: str
    role: str  # "train" or "analysis"
    analysis: str  # analysis name ("" for a training run)
    state: RunState | None  # None: the run was deleted
    progress: float = 0.0  # the run's own, 0..1 (its epochs so far)

    @property
    def done(self) -> float:
        """How much of this member is done: 1 when finished or deleted, else its progress."""
        return 1.0 if self.state is None or self.state.finished else min(max(self.progress, 0.0), 1.0)


@dataclass(frozen=True)
class Study:
    id: str
    name: str
    plan: dict[str, Any]
    source_run_id: str | None
    sweep_id: str | None
    created_at: float
    members: tuple[StudyMember, ...]

    @classmethod
    def from_rows(cls, row: Any, members: list[Any]) -> "Study":
        return cls(id=row["id"], name=row["name"], plan=json.loads(row["plan"]),
                   source_run_id=row["source_run_id"], sweep_id=row["sweep_id"], created_at=row["created_at"],
                   members=tuple(StudyMember(m["run_id"], m["label"], m["role"], m["analysis"],
                                             RunState(m["state"]) if m["state"] else None, m["progress"] or 0.0)
                                 for m in members))

    @property
    def run_ids(self) -> tuple[str, ...]:
        return tuple(m.run_id for m in self.members)

    @property
    def expected_runs(self) -> int:
        """Training runs plus one analysis per (training run or source, analysis)."""
        targets = len(self.plan["runs"]) or 1
        return len(self.plan["runs"]) + targets * len(self.plan["analyses"])

    def _members_due(self) -> int:
        """Members the study will have: its training runs, and the plan's analyses on
        each training run that has not failed or been cancelled (or on the source)."""
        trained_ok = sum(1 for m in self.members if m.role == "train" and m.state is not None
                         and m.state is not RunState.FAILED and m.state is not RunState.CANCELLED)
        return len(self.plan["runs"]) + (trained_ok if self.plan["runs"] else 1) * len(self.plan["analyses"])

    @property
    def state(self) -> RunState:
        """Like a sweep's, over the members; running while analyses are still to be
        queued on training runs that have not failed."""
        states = tuple(m.state or RunState.CANCELLED for m in self.members)
        pending = len(self.members) < self._members_due()
        if pending and not any(s in (RunState.FAILED, RunState.CANCELLED) for s in states):
            return RunState.RUNNING
        return sweep_state(states, cancel_requested=False)

    @property
    def progress(self) -> float:
        if self.state.finished:
            return 1.0  # also when failed runs leave planned analyses unqueued
        # running members count with their own progress: a study of 100-epoch runs
        # moves for hours before its first run finishes
        return min(sum(m.done for m in self.members) / self._members_due(), 1.0)
