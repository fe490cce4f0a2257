"""/api/worker/runs/{run_id}: where a remote worker reports on its run.

Every route needs the run's credential (`Authorization: Bearer <credential>`),
which the server issues when it dispatches the run to a remote worker. It is
not the admin token, and the admin token is not accepted here: a worker can
write its own run's current attempt and nothing else. Reads of the run folder
go through the public /api/runs/{run_id}/artifacts routes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from app.api.deps import JobServiceDep
from app.api.responses import CONFLICT, NOT_FOUND, WRITE
from app.api.schemas import STRICT
from jobs.models import InvalidRequest, RunKind, RunState
from jobs.remote import MAX_FILE_BYTES, Unauthorized, WorkerReports

router = APIRouter(prefix="/worker/runs/{run_id}", tags=["worker"])
_bearer = HTTPBearer(auto_error=False)
CREDENTIAL = {401: {"description": "missing credential, or not this run's"}}
REPORT = {**WRITE, **CREDENTIAL, **CONFLICT}


@dataclass(frozen=True)
class Attempt:
    """The run and attempt a credential speaks for."""
    run_id: str
    attempt: int
    reports: WorkerReports


def worker_attempt(run_id: str, jobs: JobServiceDep,
                   credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Attempt:
    reports = WorkerReports(jobs.store, jobs.data)
    try:
        attempt = reports.authenticate(run_id, credentials.credentials if credentials else None)
    except Unauthorized as exc:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, str(exc), headers={"WWW-Authenticate": "Bearer"})
    return Attempt(run_id, attempt, reports)


WorkerAttempt = Annotated[Attempt, Depends(worker_attempt)]


class AssignmentPublic(BaseModel):
    id: str
    kind: RunKind
    state: RunState
    config: dict[str, Any]
    attempt: int
    source_run_id: str | None
    n_epochs: int = Field(description="epochs the server holds already")
    cancel_requested: bool
    requeue_requested: bool = Field(False, description="sent back to the queue: stop at the next batch")


class HeartbeatIn(BaseModel):
    model_config = STRICT
    progress: float | None = Field(None, ge=0, le=1)


class HeartbeatOut(BaseModel):
    held: bool = Field(description="false: the attempt lost the run (requeued, finished, claimed again)")
    cancel_requested: bool
    requeue_requested: bool = Field(False, description="the run was sent back to the queue: stop at the next "
                                                       "batch and requeue it (`POST /api/runs/{id}/requeue`)")


class EpochIn(BaseModel):
    model_config = STRICT
    epoch: int = Field(ge=1)
    record: dict[str, Any] = Field(description="the engine's epoch record; its `epoch` equals `epoch`")


class EpochOut(BaseModel):
    epoch: int
    new: bool = Field(description="false: the server had this epoch already (a replay after a resume)")


class ResumedIn(BaseModel):
    model_config = STRICT
    epoch: int = Field(ge=0)


class FileOut(BaseModel):
    name: str
    size_bytes: int


class OutcomeIn(BaseModel):
    model_config = STRICT
    state: Literal["succeeded", "failed", "cancelled", "queued"] = Field(
        description='"queued": the worker was stopped (not the run\'s fault); the run resumes elsewhere')
    error: str | None = Field(None, max_length=100_000)


class OutcomeOut(BaseModel):
    id: str
    state: RunState


@router.get("", responses={**CREDENTIAL, **CONFLICT, **NOT_FOUND})
def get_assignment(worker: WorkerAttempt) -> AssignmentPublic:
    """The run this credential's attempt is to execute (state, config, epochs held)."""
    run = worker.reports.assignment(worker.run_id, worker.attempt)
    return AssignmentPublic(id=run.id, kind=run.kind, state=run.state, config=run.config, attempt=run.attempt,
                            source_run_id=run.source_run_id, n_epochs=run.n_epochs,
                            cancel_requested=run.cancel_requested,
                            requeue_requested=run.requeued_at is not None and run.state is RunState.RUNNING)


@router.post("/heartbeat", responses={**WRITE, **CREDENTIAL})
def heartbeat(body: HeartbeatIn, worker: WorkerAttempt) -> HeartbeatOut:
    held, cancel, requeue = worker.reports.heartbeat(worker.run_id, worker.attempt, body.progress)
    return HeartbeatOut(held=held, cancel_requested=cancel, requeue_requested=requeue)


@router.post("/epochs", responses=REPORT)
def record_epoch(body: EpochIn, worker: WorkerAttempt) -> EpochOut:
    """One finished epoch; sent after the checkpoint that holds it. A replayed epoch is ignored."""
    new = worker.reports.record_epoch(worker.run_id, worker.attempt, body.epoch, body.record)
    return EpochOut(epoch=body.epoch, new=new)


@router.post("/resumed", responses=REPORT)
def mark_resumed(body: ResumedIn, worker: WorkerAttempt) -> OutcomeOut:
    """The attempt resumed from a checkpoint, with `epoch` epochs already held."""
    worker.reports.mark_resumed(worker.run_id, worker.attempt, body.epoch)
    run = worker.reports.store.get_run(worker.run_id)
    return OutcomeOut(id=run.id, state=run.state)


@router.put("/files/{name:path}", responses={**REPORT, 413: {"description": "the file is too large"}},
            openapi_extra={"requestBody": {"required": True, "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
async def put_file(name: str, request: Request, worker: WorkerAttempt) -> FileOut:
    """A file of the run folder (checkpoint, metrics, artifacts), stored in the server's
    data directory and served by GET /api/runs/{run_id}/artifacts/{name}."""
    worker.reports.file_path(worker.run_id, name)  # a bad name is refused before the body is read
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > MAX_FILE_BYTES:
        raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, f"files are limited to {MAX_FILE_BYTES} bytes")
    content = await request.body()
    try:
        size = await run_in_threadpool(worker.reports.store_file, worker.run_id, worker.attempt, name, content)
    except InvalidRequest as exc:
        if exc.field == "body":
            raise HTTPException(status.HTTP_413_REQUEST_ENTITY_TOO_LARGE, exc.message) from exc
        raise
    return FileOut(name=name, size_bytes=size)


@router.post("/outcome", responses=REPORT)
def record_outcome(body: OutcomeIn, worker: WorkerAttempt) -> OutcomeOut:
    """How the attempt ended. `cancelled` only when the run was asked to cancel."""
    run = worker.reports.outcome(worker.run_id, worker.attempt, RunState(body.state), body.error)
    return OutcomeOut(id=run.id, state=run.state)
