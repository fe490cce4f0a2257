"""/api/studies: the study's experiments as presets, queued as runs, with reports.

    GET  /api/studies/presets               presets, their grids, analyses and defaults
    POST /api/studies/presets/{name}        queue one ({"overrides": {...}, "source_run_id": ...})
    GET  /api/studies                       queued studies, newest first
    GET  /api/studies/{id}                  one study: state, progress, member runs
    GET  /api/studies/{id}/report           report data (JSON); .md and .csv exports beside it
    POST /api/studies/{id}/cancel           cancel its unfinished runs

A study is not a run, so studies are listed at /api/studies, not under
/api/studies/runs. The first layout's paths (GET /api/studies for the presets,
POST /api/studies/{name}, /api/studies/runs[/{id}[/...]]) answer as before and
are marked deprecated in the schema, except GET /api/studies, which now lists
studies (the presets moved to /api/studies/presets).

A study's analyses are queued as its training runs succeed; a task started with
the app does that every second (reading a study does it too).
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, HTTPException, Query, status

from app.api.deps import Authorized, JobServiceDep
from app.api.responses import (ANY_REQUEST, CONFLICT, NOT_FOUND, WRITE, CsvResponse, MarkdownResponse,
                               json_errors)
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
ONE_STUDY = {**NOT_FOUND}
_REPORT_MD = {200: {"content": {"text/markdown": {"schema": {"type": "string"}}}, "description": "Markdown"}}
_REPORT_CSV = {200: {"content": {"text/csv": {"schema": {"type": "string"}}}, "description": "CSV"}}


def presets() -> StudyPresetsPublic:
    """The presets with their base config, grid, analyses and report sections."""
    data = [StudyPresetPublic(**p) for p in list_presets()]
    return StudyPresetsPublic(data=data, count=len(data))


def list_studies(jobs: JobServiceDep, limit: Limit = 100, offset: Offset = 0) -> StudiesPublic:
    """Queued studies, newest first."""
    studies, count = jobs.list_studies(limit=limit, offset=offset)
    return StudiesPublic(data=[StudyPublic.of(s) for s in studies], count=count)


def submit_study(name: str, jobs: JobServiceDep, body: StudyCreate | None = None) -> StudyPublic:
    """Queue preset `name`; 404 for an unknown preset, 422 naming a bad override."""
    if name not in PRESETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no study preset {name!r}; presets: {sorted(PRESETS)}")
    body = body or StudyCreate()
    return StudyPublic.of(jobs.submit_study(name, body.overrides, body.source_run_id))


def get_study(study_id: str, jobs: JobServiceDep) -> StudyPublic:
    return StudyPublic.of(jobs.get_study(study_id))


def study_report(study_id: str, jobs: JobServiceDep) -> dict[str, Any]:
    return jobs.study_report(study_id)


def study_report_markdown(study_id: str, jobs: JobServiceDep) -> MarkdownResponse:
    return MarkdownResponse(jobs.study_report_markdown(study_id))


def study_report_csv(study_id: str, jobs: JobServiceDep) -> CsvResponse:
    return CsvResponse(jobs.study_report_csv(study_id))


def cancel_study(study_id: str, jobs: JobServiceDep) -> StudyPublic:
    return StudyPublic.of(jobs.cancel_study(study_id))


def _routes(base: str, *, deprecated: bool) -> None:
    """The study routes under `base` ("" now, "/runs" for the deprecated layout).
    Fixed paths come before `{study_id}`, so no name is taken for an id."""
    suffix = "_deprecated" if deprecated else ""
    get, post = router.get, router.post
    get(base + "/{study_id}", name="get_study" + suffix, deprecated=deprecated, responses=ONE_STUDY)(get_study)
    get(base + "/{study_id}/report", name="study_report" + suffix, deprecated=deprecated,
        responses=ONE_STUDY)(study_report)
    get(base + "/{study_id}/report.md", name="study_report_markdown" + suffix, deprecated=deprecated,
        response_class=MarkdownResponse, responses={**_REPORT_MD, **json_errors({**ANY_REQUEST, **ONE_STUDY})})(study_report_markdown)
    get(base + "/{study_id}/report.csv", name="study_report_csv" + suffix, deprecated=deprecated,
        response_class=CsvResponse, responses={**_REPORT_CSV, **json_errors({**ANY_REQUEST, **ONE_STUDY})})(study_report_csv)
    post(base + "/{study_id}/cancel", name="cancel_study" + suffix, deprecated=deprecated,
         dependencies=[Authorized], responses={**WRITE, **ONE_STUDY, **CONFLICT})(cancel_study)


router.get("/presets", name="presets")(presets)
router.post("/presets/{name}", name="submit_study", status_code=status.HTTP_201_CREATED, dependencies=[Authorized],
            responses={**WRITE, **NOT_FOUND, **CONFLICT})(submit_study)
router.get("", name="list_studies")(list_studies)
router.get("/runs", name="list_studies_deprecated", deprecated=True)(list_studies)
_routes("/runs", deprecated=True)
_routes("", deprecated=False)
router.post("/{name}", name="submit_study_deprecated", status_code=status.HTTP_201_CREATED, deprecated=True,
            dependencies=[Authorized], responses={**WRITE, **NOT_FOUND, **CONFLICT})(submit_study)
