"""/api/backup: the server's whole data directory as one .tar.gz (jobs.backup), to keep a
study off the machine it trains on (a cloud GPU box about to be given back, a disk that may
go). The same consistent archive as `spikeboard backup`, taken while runs train; `spikeboard
restore` serves it elsewhere, and the runs it caught training resume from their checkpoints.

Each request writes a new archive of the whole store, so it is not free: one is written at a
time (another request meanwhile gets 429), a page on another site cannot start one
(app/security.py refuses a cross-site GET here), and there are no byte ranges, since a resumed
download would splice two different archives.

The archive's temp folder carries the server's pid: a server killed while sending leaves
its folder behind, and the next backup (of any server sharing the TMPDIR) removes the
folders of servers no longer running, never another live server's."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import StreamingResponse
from starlette.background import BackgroundTask

from app.api.deps import Authorized, JobServiceDep
from app.api.responses import BACKUP, WRITE
from jobs.backup import BackupError

router = APIRouter(tags=["backup"])
CHUNK = 1 << 20
RETRY_AFTER_S = 30
PREFIX = "spikeboard-backup-"  # then the writing server's pid
_writing = threading.Lock()  # held from the request until its archive is sent (or the client left)


@router.get("/backup", response_class=StreamingResponse, dependencies=[Authorized],
            # bytes to a client (a generated one reads no application/gzip); the file name says .tar.gz
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
                             "description": "the store and every run folder, as `spikeboard backup` writes them"},
                       401: WRITE[401], 403: WRITE[403], **BACKUP})
def download_backup(jobs: JobServiceDep) -> StreamingResponse:
    """Everything the server holds, so it takes the token when one is set. The archive is
    written to the temp folder (TMPDIR) first, which needs room for it, and removed once sent."""
    if not _writing.acquire(blocking=False):
        raise HTTPException(status.HTTP_429_TOO_MANY_REQUESTS, "a backup is being written: retry when it is sent",
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    folder = None
    try:
        _remove_leftovers(Path(tempfile.gettempdir()))
        folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-"))
        summary = jobs.backup(folder / "spikeboard-backup.tar.gz")
    except (BackupError, OSError) as exc:  # a missing or full temp folder: said, not a 500
        _done(folder)
        detail = str(exc) if isinstance(exc, BackupError) else f"backup failed: {exc}"
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, detail) from exc
    except BaseException:
        _done(folder)
        raise
    return StreamingResponse(_chunks(summary.path), media_type="application/octet-stream",
                             headers={"Content-Disposition": f'attachment; filename="{summary.path.name}"',
                                      "Content-Length": str(summary.bytes)},
                             background=BackgroundTask(_done, folder))


def _chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as archive:
        while chunk := archive.read(CHUNK):
            yield chunk


def _remove_leftovers(temp: Path) -> None:
    """The archive folders of servers killed while sending (their pid no longer runs)."""
    for folder in temp.glob(f"{PREFIX}*-*"):
        pid = folder.name[len(PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # no signal: whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process
    return True


def _done(folder: Path | None) -> None:
    """Remove the archive's folder and let the next backup be written."""
    try:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
    finally:
        _writing.release()
