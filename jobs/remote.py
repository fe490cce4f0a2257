"""What the server does with a remote worker's reports (the /api/worker routes).

A remote worker holds a credential for one run's one attempt
(`RunStore.issue_credential`, at dispatch). Every report is checked against
it here: the credential names the attempt, and the store accepts a write only
while that attempt holds the run (running, not requeued, not claimed again).
Files the worker sends land in the run's folder in the server's data directory,
where the API serves them as artifacts: the server's disk is the only copy a
resume or a reader ever needs.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path, PurePosixPath
from typing import Any

from jobs.models import Conflict, InvalidRequest, InvalidTransition, Run, RunState
from jobs.paths import DataDir
from jobs.store import RunStore

# A checkpoint of the largest network the limits allow is well below this.
MAX_FILE_BYTES = 2 * 2**30
OUTCOMES = (RunState.SUCCEEDED, RunState.FAILED, RunState.CANCELLED, RunState.QUEUED)


class Unauthorized(Exception):
    """No credential, or not the credential of this run."""


class WorkerReports:
    def __init__(self, store: RunStore, data: DataDir):
        self.store, self.data = store, data

    def authenticate(self, run_id: str, credential: str | None) -> int:
        """The attempt the credential was issued for; Unauthorized otherwise
        (also for an unknown run, so ids cannot be probed with a guessed token)."""
        attempt = self.store.credential_attempt(run_id, credential) if credential else None
        if attempt is None:
            raise Unauthorized(f"not a credential of run {run_id}")
        return attempt

    def _held(self, run_id: str, attempt: int) -> Run:
        run = self.store.get_run(run_id)
        if run.attempt != attempt or run.state is not RunState.RUNNING:
            raise Conflict(f"run {run_id} attempt {attempt} no longer holds the run "
                           f"(it is {run.state.value}, attempt {run.attempt})")
        return run

    def assignment(self, run_id: str, attempt: int) -> Run:
        run = self.store.get_run(run_id)
        if run.attempt != attempt:
            raise Conflict(f"run {run_id} attempt {attempt} was superseded by attempt {run.attempt}")
        return run

    def heartbeat(self, run_id: str, attempt: int, progress: float | None) -> tuple[bool, bool, bool]:
        """(held, cancel_requested, requeue_requested)."""
        held = self.store.heartbeat(run_id, attempt, progress=progress)
        cancel, requeue = self.store.stop_flags(run_id)
        return held, cancel, requeue

    def mark_resumed(self, run_id: str, attempt: int, epoch: int) -> None:
        self._held(run_id, attempt)
        self.store.mark_resumed(run_id, attempt, epoch)

    def record_epoch(self, run_id: str, attempt: int, epoch: int, record: dict[str, Any]) -> bool:
        if record.get("epoch") != epoch:
            raise InvalidRequest("record.epoch", f"must equal epoch ({epoch}), got {record.get('epoch')!r}")
        self._held(run_id, attempt)
        return self.store.record_epoch(run_id, epoch, record)

    def file_path(self, run_id: str, name: str) -> Path:
        """Where the run's file `name` goes; a name that could leave the folder is refused."""
        parts = PurePosixPath(name).parts
        if (not name or name.startswith("/") or "\\" in name or any(p in ("", ".", "..") for p in parts)
                or ".tmp" in parts[-1] or len(name) > 255):
            raise InvalidRequest("name", "must be a relative path inside the run folder (no '..', no "
                                         "temporary files)", location="path")
        root = self.data.run_dir(run_id).resolve()
        path = (root / name).resolve()
        if not path.is_relative_to(root) or path == root:
            raise InvalidRequest("name", "must stay inside the run folder", location="path")
        return path

    def store_file(self, run_id: str, attempt: int, name: str, content: bytes) -> int:
        """Write the file atomically (a reader or a resume never sees half of it)."""
        path = self.file_path(run_id, name)
        if len(content) > MAX_FILE_BYTES:
            raise InvalidRequest("body", f"files are limited to {MAX_FILE_BYTES} bytes")
        self._held(run_id, attempt)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        except (FileExistsError, NotADirectoryError) as exc:
            raise InvalidRequest("name", f"a folder of it is a file of the run: {exc}", location="path") from exc
        try:
            with os.fdopen(handle, "wb") as out:
                out.write(content)
            os.replace(tmp, path)
        except IsADirectoryError as exc:
            raise InvalidRequest("name", "is a folder of the run", location="path") from exc
        finally:
            Path(tmp).unlink(missing_ok=True)  # gone already when the replace succeeded
        return len(content)

    def outcome(self, run_id: str, attempt: int, state: RunState, error: str | None) -> Run:
        """Finished, failed, cancelled, or back to the queue (a stop not of the run's making)."""
        if state not in OUTCOMES:
            raise InvalidRequest("state", f"must be one of {[s.value for s in OUTCOMES]}")
        if state is RunState.QUEUED:
            if not self.store.requeue(run_id, attempt, restart=True):
                self._held(run_id, attempt)  # raises the Conflict that explains why
            return self.store.get_run(run_id)
        if state is RunState.CANCELLED and not self.store.cancel_requested(run_id):
            raise Conflict(f"run {run_id} was not asked to cancel")
        try:
            return self.store.transition(run_id, state, error=error, attempt=attempt)
        except InvalidTransition as exc:
            raise Conflict(str(exc)) from exc
