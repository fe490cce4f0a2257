"""/api/backup: the server's whole data directory as one .tar.gz (jobs.backup), to keep a
study off the machine it trains on (a cloud GPU box about to be given back, a disk that may
go). The same consistent archive as `spikeboard backup`, taken while runs train; `spikeboard
restore` serves it elsewhere, and the runs it caught training resume from their checkpoints."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse
from starlette.background import BackgroundTask

from app.api.deps import Authorized, JobServiceDep
from app.api.responses import BACKUP_FAILED, WRITE
from jobs.backup import BackupError

router = APIRouter(tags=["backup"])


@router.get("/backup", response_class=FileResponse, dependencies=[Authorized],
            # bytes to a client (a generated one reads no application/gzip); the file name says .tar.gz
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the store and every run folder, as `spikeboard backup` writes them"},
                       401: WRITE[401], 429: WRITE[429], **BACKUP_FAILED})
def download_backup(jobs: JobServiceDep) -> FileResponse:
    """Everything the server holds, so it takes the token when one is set. The archive is
    written to the temp folder (TMPDIR) first, which needs room for it, and removed once sent."""
    try:
        folder = Path(tempfile.mkdtemp(prefix="spikeboard-backup-"))
    except OSError as exc:  # TMPDIR missing or read-only: said, not a 500
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE,
                            f"backup failed: no temp folder to write it in ({exc})") from exc
    try:
        summary = jobs.backup(folder / "spikeboard-backup.tar.gz")
    except BackupError as exc:
        shutil.rmtree(folder, ignore_errors=True)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from exc
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    return FileResponse(summary.path, media_type="application/octet-stream", filename=summary.path.name,
                        background=BackgroundTask(shutil.rmtree, folder, ignore_errors=True))
