"""/api/force: the FORCE experiments (engine.force) and queueing one as a run.

A queued experiment is an ordinary run of kind `force`: follow it with
/api/runs/{id} (progress, events) and read its result with
/api/runs/{id}/artifacts/result.json (and the .npz files listed there).
"""

from __future__ import annotations

from fastapi import APIRouter, status

from app.api.deps import Authorized, JobServiceDep
from app.api.responses import WRITE
from app.api.schemas import ForceExperimentPublic, ForceExperimentsPublic, ForceRunCreate, RunPublic
from jobs.service import list_force_experiments

router = APIRouter(prefix="/force", tags=["force"])


@router.get("/experiments")
def list_experiments() -> ForceExperimentsPublic:
    """Each experiment with its complete default parameters."""
    data = [ForceExperimentPublic(**e) for e in list_force_experiments()]
    return ForceExperimentsPublic(data=data, count=len(data))


@router.post("/runs", status_code=status.HTTP_201_CREATED, dependencies=[Authorized], responses=WRITE)
def submit_force_run(body: ForceRunCreate, jobs: JobServiceDep) -> RunPublic:
    """Queue one experiment; a bad parameter answers 422 naming it (params.config.n, ...)."""
    return RunPublic.of(jobs.submit_force(body.experiment, body.params))
