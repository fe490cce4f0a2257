"""All REST routers under one APIRouter, mounted at /api by `create_app`."""

from fastapi import APIRouter
from fastapi.routing import APIRoute

from app.api import force
from app.api import health, runs, studies, sweeps


def operation_id(route: APIRoute) -> str:
    """The endpoint function's name (submit_run, follow_run): generated clients name
    their functions after it, instead of submit_run_api_runs_post."""
    return route.name


api_router = APIRouter(generate_unique_id_function=operation_id)
api_router.include_router(runs.router)
api_router.include_router(sweeps.router)
api_router.include_router(health.router)
api_router.include_router(studies.router)
api_router.include_router(force.router)
