"""/api/queue: the queue as a whole. Pause it, queue and order runs, resume it."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.deps import Authorized, JobServiceDep
from app.api.responses import WRITE
from app.api.schemas import QueuePublic

router = APIRouter(prefix="/queue", tags=["queue"])


@router.get("")
def get_queue(jobs: JobServiceDep) -> QueuePublic:
    """Paused (since when) or serving, and how many runs wait and run."""
    return QueuePublic.of(jobs.queue_status())


@router.post("/pause", dependencies=[Authorized], responses=WRITE)
def pause_queue(jobs: JobServiceDep) -> QueuePublic:
    """No queued run starts until resumed; running runs go on. The pause outlives a
    server restart (runs a restart requeued wait too). Pausing a paused queue keeps
    its first `paused_at`."""
    return QueuePublic.of(jobs.pause_queue())


@router.post("/resume", dependencies=[Authorized], responses=WRITE)
def resume_queue(jobs: JobServiceDep) -> QueuePublic:
    """Queued runs start again, in queue order, as slots are free."""
    return QueuePublic.of(jobs.resume_queue())
