"""The error answers each route can give, for the OpenAPI schema.

A client generated from /openapi.json must know every status the server
sends: these dicts are merged into the routes' `responses`.
"""

from __future__ import annotations

from typing import Any

from fastapi.responses import PlainTextResponse

from app.api.schemas import ErrorPublic


def _error(description: str) -> dict[str, Any]:
    return {"model": ErrorPublic, "description": description}


# any request: the Host check (app/security.py)
ANY_REQUEST: dict[int | str, dict[str, Any]] = {400: _error("Host header not served here")}
# a request naming a run, sweep or study
NOT_FOUND: dict[int | str, dict[str, Any]] = {404: _error("no such run, sweep, study, preset or file")}
# valid, but the current state does not allow it
CONFLICT: dict[int | str, dict[str, Any]] = {409: _error("the run's state does not allow this now")}
# POST / DELETE: token, cross-site and body-type checks
WRITE: dict[int | str, dict[str, Any]] = {
    401: _error("a token is configured and the bearer token is missing or wrong"),
    403: _error("cross-site request: the Origin is not this server's (nor allowed)"),
    415: _error("the body is not JSON"),
    429: _error("too many wrong tokens from this client"),
}
# GET /api/backup: one archive at a time, written before it is sent
BACKUP: dict[int | str, dict[str, Any]] = {
    429: _error("a backup is being written (retry after Retry-After), or too many wrong tokens from this client"),
    503: _error("the archive could not be written (e.g. no room left in the server's temp folder)")}


class MarkdownResponse(PlainTextResponse):
    media_type = "text/markdown"


class CsvResponse(PlainTextResponse):
    media_type = "text/csv"


# what artifact files are served as (by suffix); anything else is bytes
ARTIFACT_TYPES = {".json": "application/json", ".jsonl": "application/x-ndjson", ".csv": "text/csv",
                  ".md": "text/markdown", ".txt": "text/plain"}
ARTIFACT_DEFAULT_TYPE = "application/octet-stream"


def json_errors(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """The same errors for a route whose own answer is not JSON (report.md): with a
    `model`, FastAPI would document them in the route's media type."""
    ref = {"$ref": "#/components/schemas/ErrorPublic"}  # documented by the JSON routes
    return {code: {"description": r["description"], "content": {"application/json": {"schema": ref}}}
            for code, r in responses.items()}
