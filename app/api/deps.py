"""Dependencies shared by the routers, as `Annotated` aliases."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from app.settings import Settings
from jobs.scheduler import Scheduler
from jobs.service import JobService
from jobs.store import RunStore
from jobs.whatif import WhatIfService


@dataclass(frozen=True)
class Services:
    """What the app built for itself; the dashboard gets the same object."""
    settings: Settings
    store: RunStore
    jobs: JobService
    scheduler: Scheduler
    whatif: WhatIfService  # live what-if inferences (their CPU cap)


def get_services(request: Request) -> Services:
    return request.app.state.services


def get_job_service(services: Annotated[Services, Depends(get_services)]) -> JobService:
    return services.jobs


_bearer = HTTPBearer(auto_error=False)


def require_token(services: Annotated[Services, Depends(get_services)],
                  credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> None:
    """Mutating endpoints: with a token configured, `Authorization: Bearer <token>` is required."""
    token = services.settings.token
    if token is None:
        return
    if credentials is None or not secrets.compare_digest(credentials.credentials.encode(), token.encode()):
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token",
                            headers={"WWW-Authenticate": "Bearer"})


JobServiceDep = Annotated[JobService, Depends(get_job_service)]
Authorized = Depends(require_token)
