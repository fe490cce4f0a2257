"""One place mapping the service layer's errors to HTTP answers."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from jobs.models import Conflict, InvalidRequest, InvalidTransition, RunNotFound, SweepNotFound


def invalid(field_path: str, message: str, prefix: tuple[str, ...] = ("body",)) -> JSONResponse:
    loc = [*prefix, *field_path.split(".")]
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": loc, "msg": message, "type": "value_error"}]})


def install_error_handlers(app: FastAPI) -> None:
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    async def bad_field(request: Request, exc: InvalidRequest) -> JSONResponse:
        return invalid(exc.field, exc.message)

    for error in (RunNotFound, SweepNotFound):
        app.add_exception_handler(error, not_found)
    for error in (InvalidTransition, Conflict):
        app.add_exception_handler(error, conflict)
    app.add_exception_handler(InvalidRequest, bad_field)
