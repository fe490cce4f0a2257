"""/api/health: cheap liveness for probes (never touches the dashboard)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import JobServiceDep
from app.api.schemas import Health
from jobs.models import RunState
from jobs.version import code_version

router = APIRouter(tags=["health"])


@router.get("/health")
def health(jobs: JobServiceDep) -> Health:
    _, queued = jobs.list_runs(state=RunState.QUEUED, limit=1)
    _, running = jobs.list_runs(state=RunState.RUNNING, limit=1)
    return Health(status="ok", version=code_version(), queued=queued, running=running)
