"""All REST routers under one APIRouter, mounted at /api by `create_app`."""

from fastapi import APIRouter

from app.api import force
from app.api import health, runs, studies, sweeps
from app.api import whatif

api_router = APIRouter()
api_router.include_router(runs.router)
api_router.include_router(sweeps.router)
api_router.include_router(health.router)
api_router.include_router(studies.router)
api_router.include_router(force.router)
api_router.include_router(whatif.router)
