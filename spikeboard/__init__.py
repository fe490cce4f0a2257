"""spikeboard's public Python API: the client of a spikeboard server.

    from spikeboard import Client

The implementation lives in `app.client` (beside the API whose models it returns);
this package is the stable name scripts import.
"""

from app.api.schemas import (ArtifactPublic, Health, RunPublic, RunsPublic, StudyPublic, SweepPublic)
from app.client import (ApiError, Client, ClientError, Conflict, Event, InvalidRequest, NotFound,
                        ServerUnreachable, Unauthorized)
from jobs.models import RunKind, RunState

__all__ = ["Client", "Event", "ClientError", "ApiError", "Unauthorized", "NotFound", "Conflict", "InvalidRequest",
           "ServerUnreachable", "RunPublic", "RunsPublic", "SweepPublic", "StudyPublic", "ArtifactPublic", "Health",
           "RunState", "RunKind"]
