"""How a worker reports: one protocol, two transports.

`StoreTransport` writes the run store and the run folder directly (the local
executor's workers, on the server's machine). `HttpTransport` holds neither: it
gets its run from the server's API, trains into a scratch folder it fills with
the run's files from the server (config, metrics, last checkpoint on a resume),
and sends back over the API what the store transport writes locally: heartbeats,
epochs, files, the outcome. It authenticates with the per-run credential the
server issued when it dispatched the run (`RunStore.issue_credential`), which
lets it write this run's current attempt and nothing else.

The worker (jobs.worker) sees only the protocol, so both run the same code.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote

from jobs.models import Conflict, InvalidTransition, Run, RunKind, RunState
from jobs.paths import DataDir, is_temporary
from jobs.store import RunStore

log = logging.getLogger("jobs.transport")
CREDENTIAL_ENV = "SPIKEBOARD_RUN_CREDENTIAL"
# The checkpoint goes last: a folder on the server never holds a checkpoint newer
# than the metrics and config a resume reads beside it.
CHECKPOINT = "checkpoints/last.pt"


@dataclass(frozen=True)
class Assignment:
    """What a worker needs to know of its run."""
    id: str
    kind: RunKind
    config: dict[str, Any]
    attempt: int
    source_run_id: str | None
    n_epochs: int  # epochs the server holds already

    @classmethod
    def of(cls, run: Run) -> "Assignment":
        return cls(run.id, run.kind, run.config, run.attempt, run.source_run_id, run.n_epochs)


class LeaseLost(Exception):
    """The run was requeued, finished or claimed by a newer attempt."""


class Transport(Protocol):
    def assignment(self) -> Assignment | None:
        """The run, if this attempt still holds it (None: a stale launch)."""

    def run_dir(self) -> Path:
        """The folder the engine writes the run into."""

    def source_dir(self, run_id: str) -> Path:
        """The folder of another run this one reads (an analysis's trained run)."""

    def beat(self, progress: float | None) -> bool:
        """Alive; False when the run is to stop (lease lost, cancel asked, or sent back to the queue)."""

    def mark_resumed(self, epoch: int) -> None: ...

    def record_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        """Store one epoch (a replayed one is ignored), after the files that hold it."""

    def sync(self) -> None:
        """Make the server's copy of the run folder current."""

    def cancel_requested(self) -> bool: ...

    def stop_requested(self) -> bool:
        """Cancelled, or sent back to the queue (the worker stops at the next batch either way)."""

    def requeue(self) -> bool:
        """Give the run back to the queue, not as its fault (the worker was told to stop)."""

    def finish(self, state: RunState, error: str | None) -> bool:
        """Record the outcome; False if a newer attempt owns the run."""

    def close(self) -> None: ...


class StoreTransport:
    """Direct: the SQLite store and the data directory, on the server's machine."""

    def __init__(self, data: DataDir, run_id: str, attempt: int):
        self.data, self.run_id, self.attempt = data, run_id, attempt
        self.store = RunStore(data.db_path)

    def assignment(self) -> Assignment | None:
        run = self.store.get_run(self.run_id)
        if run.attempt != self.attempt or run.state is not RunState.RUNNING:
            return None
        self.store.set_worker_pid(self.run_id, self.attempt, os.getpid())
        return Assignment.of(run)

    def run_dir(self) -> Path:
        return self.data.run_dir(self.run_id)

    def source_dir(self, run_id: str) -> Path:
        return self.data.run_dir(run_id)

    def beat(self, progress: float | None) -> bool:
        held = self.store.heartbeat(self.run_id, self.attempt, progress=progress)
        return held and not self.store.stop_requested(self.run_id)

    def mark_resumed(self, epoch: int) -> None:
        self.store.mark_resumed(self.run_id, self.attempt, epoch)

    def record_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        self.store.record_epoch(self.run_id, epoch, record)

    def sync(self) -> None:
        pass  # the folder is the server's

    def cancel_requested(self) -> bool:
        return self.store.cancel_requested(self.run_id)

    def stop_requested(self) -> bool:
        return self.store.stop_requested(self.run_id)

    def requeue(self) -> bool:
        return self.store.requeue(self.run_id, self.attempt, restart=True)

    def finish(self, state: RunState, error: str | None) -> bool:
        try:
            self.store.transition(self.run_id, state, error=error, attempt=self.attempt)
        except (Conflict, InvalidTransition) as lost:
            log.warning("not recording %s: %s", state.value, lost)
            return False
        return True

    def close(self) -> None:
        self.store.close()


class ServerUnreachable(Exception):
    """The server did not answer within the retry budget."""


class HttpTransport:
    """Over the server's API (/api/worker/runs/...), with the run's credential."""

    def __init__(self, server_url: str, run_id: str, attempt: int, credential: str, *,
                 scratch: str | Path | None = None, retry_s: float = 15.0, timeout_s: float = 60.0):
        import httpx

        self.run_id, self.attempt, self.retry_s = run_id, attempt, retry_s
        self._http = httpx.Client(base_url=server_url.rstrip("/"), timeout=timeout_s,
                                  headers={"Authorization": f"Bearer {credential}"})
        self._own_scratch = scratch is None
        self.scratch = Path(tempfile.mkdtemp(prefix=f"spikeboard-{run_id}-")) if scratch is None else Path(scratch)
        self._sent: dict[str, tuple[int, int]] = {}  # file -> (size, mtime_ns) the server has

    # --- the API ------------------------------------------------------------------------
    def _call(self, method: str, path: str, **kwargs: Any):
        """One request, retried while the server cannot be reached (it may be restarting)."""
        import httpx

        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                return self._http.request(method, path, **kwargs)
            except httpx.TransportError as exc:
                if time.monotonic() >= deadline:
                    raise ServerUnreachable(f"{method} {path}: {exc}") from exc
                time.sleep(0.5)

    def _worker_call(self, method: str, suffix: str = "", **kwargs: Any):
        response = self._call(method, f"/api/worker/runs/{self.run_id}{suffix}", **kwargs)
        if response.status_code in (401, 409):  # credential replaced (new attempt) or lease lost
            raise LeaseLost(f"{method} {suffix or '/'}: HTTP {response.status_code} {response.text[:200]}")
        response.raise_for_status()
        return response.json()

    def assignment(self) -> Assignment | None:
        try:
            body = self._worker_call("GET")
        except LeaseLost:
            return None
        if body["attempt"] != self.attempt or body["state"] != RunState.RUNNING.value:
            return None
        self._download(self.run_id, self.run_dir())
        return Assignment(body["id"], RunKind(body["kind"]), body["config"], body["attempt"],
                          body["source_run_id"], body["n_epochs"])

    def run_dir(self) -> Path:
        return self.scratch / self.run_id

    def source_dir(self, run_id: str) -> Path:
        folder = self.scratch / "sources" / run_id
        if not folder.exists():
            self._download(run_id, folder)
        return folder

    def _download(self, run_id: str, folder: Path) -> None:
        """The server's copy of a run folder (the public, read-only file routes)."""
        listing = self._call("GET", f"/api/runs/{run_id}/artifacts")
        listing.raise_for_status()
        for entry in listing.json()["data"]:
            name = entry["name"]
            response = self._call("GET", f"/api/runs/{run_id}/artifacts/{quote(name)}")
            response.raise_for_status()
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(response.content)
            if run_id == self.run_id:
                self._sent[name] = _signature(path)
        folder.mkdir(parents=True, exist_ok=True)

    def beat(self, progress: float | None) -> bool:
        try:
            reply = self._worker_call("POST", "/heartbeat", json={"progress": progress})
        except LeaseLost:
            return False
        return reply["held"] and not reply["cancel_requested"] and not reply.get("requeue_requested", False)

    def mark_resumed(self, epoch: int) -> None:
        self._worker_call("POST", "/resumed", json={"epoch": epoch})

    def record_epoch(self, epoch: int, record: dict[str, Any]) -> None:
        self.sync()  # the checkpoint of this epoch reaches the server before the epoch does
        self._worker_call("POST", "/epochs", json={"epoch": epoch, "record": record})

    def sync(self) -> None:
        """Send the files that changed since the last sync; the checkpoint last."""
        root = self.run_dir()
        if not root.is_dir():
            return
        changed = []
        for path in sorted(root.rglob("*")):
            name = path.relative_to(root).as_posix()
            if path.is_file() and not is_temporary(path) and self._sent.get(name) != _signature(path):
                changed.append(name)
        changed.sort(key=lambda name: name == CHECKPOINT)
        for name in changed:
            path = root / name
            signature = _signature(path)
            self._worker_call("PUT", f"/files/{quote(name)}", content=path.read_bytes(),
                              headers={"Content-Type": "application/octet-stream"})
            self._sent[name] = signature

    def cancel_requested(self) -> bool:
        try:
            return bool(self._worker_call("GET")["cancel_requested"])
        except LeaseLost:
            return False

    def stop_requested(self) -> bool:
        try:
            assignment = self._worker_call("GET")
        except LeaseLost:
            return True  # a newer attempt owns the run: stop
        return bool(assignment["cancel_requested"] or assignment.get("requeue_requested"))

    def requeue(self) -> bool:
        return self._outcome(RunState.QUEUED, None)

    def finish(self, state: RunState, error: str | None) -> bool:
        return self._outcome(state, error)

    def _outcome(self, state: RunState, error: str | None) -> bool:
        try:
            if state is not RunState.QUEUED:
                self.sync()  # summary, final weights, analysis results
            self._worker_call("POST", "/outcome", json={"state": state.value, "error": error})
        except (LeaseLost, ServerUnreachable) as lost:
            log.warning("not recording %s: %s", state.value, lost)
            return False
        return True

    def close(self) -> None:
        self._http.close()
        if self._own_scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)


def _signature(path: Path) -> tuple[int, int]:
    stat = path.stat()
    return stat.st_size, stat.st_mtime_ns
