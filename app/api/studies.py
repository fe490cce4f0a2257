"""/api/studies: the study's experiments as presets, queued as runs, with reports.

    GET  /api/studies                       presets, their grids, analyses and defaults
    POST /api/studies/{name}                queue one ({"overrides": {...}, "source_run_id": ...})
    GET  /api/studies/runs                  queued studies, newest first
    GET  /api/studies/runs/{id}             one study: state, progress, member runs
    GET  /api/studies/runs/{id}/report      report data (JSON); .md and .csv exports beside it
    POST /api/studies/runs/{id}/cancel      cancel its unfinished runs

A study's analyses are queued as its training runs succeed; a task started with
the app does that every second (reading a study does it too).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, status
from fastapi.responses import PlainTextResponse

from app.api.deps import Authorized, JobServiceDep
from app.api.schemas import StudiesPublic, StudyCreate, StudyPresetPublic, StudyPresetsPublic, StudyPublic
from engine.studies import PRESETS, list_presets

log = logging.getLogger("app.api.studies")
ADVANCE_EVERY_S = 1.0


async def _advance_forever(app: FastAPI) -> None:
    jobs = app.state.services.jobs
    while True:
        try:
            await asyncio.to_thread(jobs.advance_studies)
        except Exception:  # a bad pass must not stop the next one
            log.exception("advancing studies failed")
        await asyncio.sleep(ADVANCE_EVERY_S)


@asynccontextmanager
async def advance_studies(app: FastAPI):
    task = asyncio.create_task(_advance_forever(app), name="studies")
    try:
        yield
    finally:
        task.cancel()


router = APIRouter(prefix="/studies", tags=["studies"], lifespan=advance_studies)
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]


@router.get("")
def presets() -> StudyPresetsPublic:
    data = [StudyPresetPublic(**p) for p in list_presets()]
    return StudyPresetsPublic(data=data, count=len(data))


@router.get("/runs")
def list_studies(jobs: JobServiceDep, limit: Limit = 100, offset: Offset = 0) -> StudiesPublic:
    studies, count = jobs.list_studies(limit=limit, offset=offset)
    return StudiesPublic(data=[StudyPublic.of(s) for s in studies], count=count)


@router.post("/{name}", status_code=status.HTTP_201_CREATED, dependencies=[Authorized])
def submit_study(name: str, jobs: JobServiceDep, body: StudyCreate | None = None) -> StudyPublic:
    """Queue preset `name`; 404 for an unknown preset, 422 naming a bad override."""
    if name not in PRESETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no study preset {name!r}; presets: {sorted(PRESETS)}")
    body = body or StudyCreate()
    return StudyPublic.of(jobs.submit_study(name, body.overrides, body.source_run_id))


@router.get("/runs/{study_id}")
def get_study(study_id: str, jobs: JobServiceDep) -> StudyPublic:
    return StudyPublic.of(jobs.get_study(study_id))


@router.get("/runs/{study_id}/report")
def study_report(study_id: str, jobs: JobServiceDep) -> dict[str, Any]:
    return jobs.study_report(study_id)


@router.get("/runs/{study_id}/report.md", response_class=PlainTextResponse)
def study_report_markdown(study_id: str, jobs: JobServiceDep) -> PlainTextResponse:
    return PlainTextResponse(jobs.study_report_markdown(study_id), media_type="text/markdown")


@router.get("/runs/{study_id}/report.csv", response_class=PlainTextResponse)
def study_report_csv(study_id: str, jobs: JobServiceDep) -> PlainTextResponse:
    return PlainTextResponse(jobs.study_report_csv(study_id), media_type="text/csv")


@router.post("/runs/{study_id}/cancel", dependencies=[Authorized])
def cancel_study(study_id: str, jobs: JobServiceDep) -> StudyPublic:
    return StudyPublic.of(jobs.cancel_study(study_id))
