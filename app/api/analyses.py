"""/api/analyses: the analyses POST /api/runs/{id}/analyses accepts."""

from __future__ import annotations

from fastapi import APIRouter

from app.api.schemas import AnalysesPublic, AnalysisPublic
from jobs.service import list_analyses

router = APIRouter(prefix="/analyses", tags=["analyses"])


@router.get("")
def analyses() -> AnalysesPublic:
    """Each analysis with its description and complete default parameters."""
    data = [AnalysisPublic(**a) for a in list_analyses()]
    return AnalysesPublic(data=data, count=len(data))
