"""All REST routers under one APIRouter, mounted at /api by `create_app`.

Every route answers its errors as JSON and declares them in the OpenAPI
schema (app/api/responses.py), so a generated client knows each status."""

from fastapi import APIRouter, Depends
from fastapi.routing import APIRoute

from app.api import analyses, backup, force, health, queue, runs, studies, sweeps, whatif, worker
from app.api.errors import finite_json_body
from app.api.responses import ANY_REQUEST


def operation_id(route: APIRoute) -> str:
    """The endpoint function's name (submit_run, follow_run): generated clients name
    their functions after it, instead of submit_run_api_runs_post."""
    return route.name


api_router = APIRouter(dependencies=[Depends(finite_json_body)], responses=ANY_REQUEST,
                       generate_unique_id_function=operation_id)
api_router.include_router(runs.router)
api_router.include_router(sweeps.router)
api_router.include_router(queue.router)
api_router.include_router(health.router)
api_router.include_router(analyses.router)
api_router.include_router(studies.router)
api_router.include_router(force.router)
api_router.include_router(whatif.router)
api_router.include_router(worker.router)
api_router.include_router(backup.router)
