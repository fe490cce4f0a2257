"""/api/runs: submit, list, inspect, follow, cancel, rerun, delete, analyse."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Annotated, Iterator

from fastapi import APIRouter, Header, Query, Response, status
from fastapi.responses import FileResponse
from sse_starlette.sse import EventSourceResponse

from app.api.deps import Authorized, JobServiceDep
from app.api.responses import (ARTIFACT_DEFAULT_TYPE, ARTIFACT_TYPES, CONFLICT, NOT_FOUND, WRITE, CsvResponse)
from app.api.schemas import (AnalysisCreate, ArtifactPublic, ArtifactsPublic, MetricsPublic, RasterPublic,
                             RunCreate, RunPublic, RunsPublic)
from jobs.models import InvalidRequest, RunKind, RunState

router = APIRouter(prefix="/runs", tags=["runs"])
ONE_RUN = {**NOT_FOUND}
RunId = Annotated[str, "run id"]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10**9)]


@contextmanager
def fields_under(prefix: str) -> Iterator[None]:
    """Name a bad field by its place in the request body (config.n_e, params.x)."""
    try:
        yield
    except InvalidRequest as exc:
        raise exc.under(prefix) from exc


@contextmanager
def query_fields() -> Iterator[None]:
    """A bad field named by the service is a query parameter here (loc ["query", "sample"])."""
    try:
        yield
    except InvalidRequest as exc:
        raise InvalidRequest(exc.field, exc.message, more=exc.more, location="query") from exc


@router.post("", status_code=status.HTTP_201_CREATED, dependencies=[Authorized], responses=WRITE)
def submit_run(body: RunCreate, jobs: JobServiceDep) -> RunPublic:
    with fields_under("config"):
        run = jobs.submit_run(body.config.model_dump())
    return RunPublic.of(run)


@router.get("")
def list_runs(jobs: JobServiceDep, state: RunState | None = None, kind: RunKind | None = None,
              sweep_id: str | None = None, limit: Limit = 100, offset: Offset = 0) -> RunsPublic:
    runs, count = jobs.list_runs(state=state, kind=kind, sweep_id=sweep_id, limit=limit, offset=offset)
    return RunsPublic(data=[RunPublic.of(r) for r in runs], count=count)


@router.get("/{run_id}", responses=ONE_RUN)
def get_run(run_id: RunId, jobs: JobServiceDep) -> RunPublic:
    return RunPublic.of(jobs.get_run(run_id))


@router.get("/{run_id}/metrics", response_model=MetricsPublic,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}}},
                             "description": "JSON, or CSV on request"}, **ONE_RUN})
def get_metrics(run_id: RunId, jobs: JobServiceDep, format: Annotated[str | None, Query(pattern="^(json|csv)$")] = None,
                accept: Annotated[str | None, Header()] = None):
    """JSON by default; CSV with `?format=csv` or `Accept: text/csv`."""
    wants_csv = format == "csv" or (format is None and "text/csv" in (accept or ""))
    if wants_csv:
        return CsvResponse(jobs.metrics_csv(run_id))
    records = jobs.metrics(run_id)
    return MetricsPublic(data=records, count=len(records))


@router.get("/{run_id}/events", response_class=EventSourceResponse,
            responses={200: {"content": {"text/event-stream": {"schema": {"type": "string"}}},
                             "description": "state and epoch events"}, **ONE_RUN})
async def follow_run(run_id: RunId, jobs: JobServiceDep) -> EventSourceResponse:
    """Server-Sent Events: `state` (now and on each change), `epoch` (each new
    epoch), then `end` once the run is finished."""
    jobs.get_run(run_id)  # 404 before the stream starts

    async def stream():
        async for event, data in jobs.events(run_id):
            yield {"event": event, "data": json.dumps(data)}
        yield {"event": "end", "data": json.dumps({"id": run_id})}

    return EventSourceResponse(stream())


@router.post("/{run_id}/cancel", dependencies=[Authorized], responses={**WRITE, **ONE_RUN, **CONFLICT})
def cancel_run(run_id: RunId, jobs: JobServiceDep) -> RunPublic:
    """Queued: cancelled at once. Running: cancelled within seconds. Finished: 409."""
    return RunPublic.of(jobs.cancel_run(run_id))


@router.post("/{run_id}/front", dependencies=[Authorized], responses={**WRITE, **ONE_RUN, **CONFLICT})
def move_to_front(run_id: RunId, jobs: JobServiceDep) -> RunPublic:
    """A queued run is started next, before every run queued so far (a later move
    goes before it). Not queued: 409."""
    return RunPublic.of(jobs.move_to_front(run_id))


@router.post("/{run_id}/requeue", dependencies=[Authorized], responses={**WRITE, **ONE_RUN, **CONFLICT})
def requeue(run_id: RunId, jobs: JobServiceDep) -> RunPublic:
    """A running run goes back to the queue: it stops at its next batch and resumes from its
    last checkpoint when it next gets a slot, waiting its turn (priority, then age) like a run
    that never ran; its slot goes to the queue's next run. Not running: 409."""
    return RunPublic.of(jobs.requeue_run(run_id))


@router.post("/{run_id}/rerun", status_code=status.HTTP_201_CREATED, dependencies=[Authorized],
             responses={**WRITE, **ONE_RUN, **CONFLICT})
def rerun(run_id: RunId, jobs: JobServiceDep) -> RunPublic:
    """A new queued run with the same config; its `source_run_id` is the run it repeats
    (an analysis's re-run analyses the same trained run, and names that one)."""
    return RunPublic.of(jobs.rerun(run_id))


@router.delete("/{run_id}", status_code=status.HTTP_204_NO_CONTENT, dependencies=[Authorized],
               responses={**WRITE, **ONE_RUN, **CONFLICT})
def delete_run(run_id: RunId, jobs: JobServiceDep) -> Response:
    """Finished runs only: a queued or running run answers 409 (cancel it first), and
    so does a run that an unfinished analysis or re-run reads (cancel or wait for it)."""
    jobs.delete_run(run_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{run_id}/analyses", status_code=status.HTTP_201_CREATED, dependencies=[Authorized],
             responses={**WRITE, **ONE_RUN, **CONFLICT})
def submit_analysis(run_id: RunId, body: AnalysisCreate, jobs: JobServiceDep) -> RunPublic:
    """Queue an analysis (e.g. coupling_sweep) of a succeeded train run."""
    return RunPublic.of(jobs.submit_analysis(run_id, body.name, body.params))


@router.get("/{run_id}/raster", responses={**ONE_RUN, **CONFLICT})
def get_raster(run_id: RunId, jobs: JobServiceDep, sample: Annotated[int, Query(ge=0, le=100_000)] = 0,
               ei_factor: Annotated[float, Query(ge=0, le=100)] = 1.0,
               ie_factor: Annotated[float, Query(ge=0, le=100)] = 1.0) -> RasterPublic:
    """Simulate test image `sample` through the run's weights (W_ei, W_ie scaled by
    the factors, as in the coupling sweep) and return its spikes and spectrum."""
    with query_fields():
        return RasterPublic(**jobs.spike_raster(run_id, sample, ei_factor, ie_factor))


@router.get("/{run_id}/artifacts", responses=ONE_RUN)
def list_artifacts(run_id: RunId, jobs: JobServiceDep) -> ArtifactsPublic:
    files = [ArtifactPublic(**f) for f in jobs.list_artifacts(run_id)]
    return ArtifactsPublic(data=files, count=len(files))


_ARTIFACT_CONTENT = {media: {"schema": {"type": "string", "format": "binary"}}
                     # binary first: generated clients read a response as its first type
                     for media in (ARTIFACT_DEFAULT_TYPE, *ARTIFACT_TYPES.values())}


@router.get("/{run_id}/artifacts/{name:path}", response_class=FileResponse,
            responses={200: {"content": _ARTIFACT_CONTENT, "description": "the file, typed by its suffix"},
                       **ONE_RUN})
def get_artifact(run_id: RunId, name: str, jobs: JobServiceDep) -> FileResponse:
    """A file inside the run's folder (e.g. artifacts/rates.npz); nothing outside it."""
    path = jobs.artifact_path(run_id, name)
    return FileResponse(path, media_type=ARTIFACT_TYPES.get(path.suffix.lower(), ARTIFACT_DEFAULT_TYPE))
