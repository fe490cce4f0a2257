"""/api/sweeps: one request, many child runs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from app.api.deps import Authorized, JobServiceDep
from app.api.responses import CONFLICT, NOT_FOUND, WRITE
from jobs.models import InvalidRequest
from app.api.schemas import SweepCreate, SweepPublic, SweepsPublic

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Authorized], responses=WRITE)
def submit_sweep(body: SweepCreate, jobs: JobServiceDep) -> SweepPublic:
    """Grid over config fields (seeds included): {"config": {...}, "grid": {"arch": ["ping", "coba"]}}."""
    try:
        return SweepPublic.of(jobs.submit_sweep(body.base_config(), body.grid))
    except InvalidRequest as exc:
        if body.base is not None:
            raise
        # the service names the base config "base"; this request called it "config"
        (field, message), *more = [(_renamed(f), m) for f, m in exc.errors]
        raise InvalidRequest(field, message, more=tuple(more)) from exc


def _renamed(field: str) -> str:
    return "config" + field[len("base"):] if field == "base" or field.startswith("base.") else field


@router.get("")
def list_sweeps(jobs: JobServiceDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
                offset: Annotated[int, Query(ge=0, le=10**9)] = 0) -> SweepsPublic:
    sweeps, count = jobs.list_sweeps(limit=limit, offset=offset)
    return SweepsPublic(data=[SweepPublic.of(s) for s in sweeps], count=count)


@router.get("/{sweep_id}", responses=NOT_FOUND)
def get_sweep(sweep_id: str, jobs: JobServiceDep) -> SweepPublic:
    return SweepPublic.of(jobs.get_sweep(sweep_id))


@router.post("/{sweep_id}/cancel", dependencies=[Authorized], responses={**WRITE, **NOT_FOUND, **CONFLICT})
def cancel_sweep(sweep_id: str, jobs: JobServiceDep) -> SweepPublic:
    """Cancels every unfinished child; finished children keep their state."""
    return SweepPublic.of(jobs.cancel_sweep(sweep_id))
