"""/api/health: cheap liveness for probes (never touches the dashboard)."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import JobServiceDep
from app.api.schemas import Health
from jobs.version import code_version

router = APIRouter(tags=["health"])


@router.get("/health")
def health(jobs: JobServiceDep) -> Health:
    queue = jobs.queue_status()
    return Health(status="ok", version=code_version(), queued=queue.queued, running=queue.running,
                  paused=queue.paused)
