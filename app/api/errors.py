"""One place mapping the service layer's errors to HTTP answers.

Every error body is valid JSON: a rejected value is echoed back only as JSON
can hold it (NaN and Infinity, which Python's parser accepts in a request body,
come back as the strings "NaN", "Infinity"), so a 422 never turns into a 500.
"""

from __future__ import annotations

import json
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from jobs.models import Conflict, InvalidRequest, InvalidTransition, RunNotFound, SweepNotFound


def invalid(field_path: str, message: str, prefix: tuple[str, ...] = ("body",)) -> JSONResponse:
    return invalid_fields([(field_path, message)], prefix)


def invalid_fields(errors: list[tuple[str, str]], prefix: tuple[str, ...] = ("body",)) -> JSONResponse:
    """A 422 naming every bad field: [(dotted path, message)]."""
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": [*prefix, *field_path.split(".")], "msg": message, "type": "value_error"}
        for field_path, message in errors]})


def json_safe(value: Any) -> Any:
    """`value` with non-finite floats as strings and anything else JSON cannot
    hold as its repr (pydantic puts the raw input, exceptions included, in errors)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else ("NaN" if math.isnan(value) else
                                                   ("Infinity" if value > 0 else "-Infinity"))
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return repr(value)


def install_error_handlers(app: FastAPI) -> None:
    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    async def conflict(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    async def bad_field(request: Request, exc: InvalidRequest) -> JSONResponse:
        return invalid_fields(exc.errors, exc.prefix)

    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": json_safe(list(exc.errors()))})

    for error in (RunNotFound, SweepNotFound):
        app.add_exception_handler(error, not_found)
    for error in (InvalidTransition, Conflict):
        app.add_exception_handler(error, conflict)
    app.add_exception_handler(InvalidRequest, bad_field)
    app.add_exception_handler(RequestValidationError, bad_request)


def non_finite_paths(value: Any, path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Where `value` (a parsed JSON body) holds NaN or +-Infinity."""
    if isinstance(value, float) and not math.isfinite(value):
        return [path]
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in non_finite_paths(v, (*path, str(k)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in non_finite_paths(v, (*path, str(i)))]
    return []


async def finite_json_body(request: Request) -> None:
    """A router dependency: JSON has no NaN or Infinity, though Python's parser
    takes them; a body holding one is refused with a 422 naming each place, in
    every field, known or not, before anything stores or echoes the value."""
    if request.method not in ("POST", "PUT", "PATCH"):
        return
    if request.headers.get("content-type", "").split(";")[0].strip().lower() == "application/octet-stream":
        return  # a run file a remote worker uploads, stored as sent (result.json may hold NaN)
    raw = await request.body()  # Starlette caches it: the route reads the same bytes
    if not raw or not any(word in raw for word in (b"NaN", b"Infinity")):
        return
    try:
        body = json.loads(raw)
    except ValueError:
        return  # not JSON at all: the route's own parsing answers that
    places = non_finite_paths(body)
    if places:
        raise RequestValidationError([{"loc": ("body", *place), "type": "finite_number",
                                       "msg": "must be a finite number (JSON has no NaN or Infinity)",
                                       "input": None} for place in places])
