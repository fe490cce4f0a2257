"""The Python client of spikeboard's REST API, for scripts and notebooks.

    from spikeboard import Client

    client = Client("http://gpu-box:8000", token="...")  # or SPIKEBOARD_URL / SPIKEBOARD_TOKEN
    run = client.submit_run(arch="ping", epochs=3)
    for event in client.follow(run):
        print(event.name, event.data)
    client.metrics(run)  # a pandas DataFrame, one row per epoch

Results are the API's own response models (`app.api.schemas`: RunPublic, SweepPublic,
StudyPublic, ...), so a script gets attributes and types, not dicts. Methods that take
a run, sweep or study take its id or the model itself. An answer of 4xx/5xx raises
`ApiError` (or its subclass for the status) carrying the server's `detail`.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, NamedTuple, TypeVar

import httpx
from pydantic import BaseModel

from app.api.schemas import (ArtifactPublic, ArtifactsPublic, ForceExperimentsPublic, Health, MetricsPublic,
                             QueuePublic, RunPublic, RunsPublic, StudiesPublic, StudyPresetsPublic, StudyPublic, SweepPublic,
                             SweepsPublic)
from jobs.models import FINISHED_STATES, RunKind, RunState

if TYPE_CHECKING:
    import pandas

DEFAULT_URL = "http://127.0.0.1:8000"
Model = TypeVar("Model", bound=BaseModel)


class ClientError(Exception):
    """Base of the errors this client raises."""


class ServerUnreachable(ClientError):
    """No HTTP answer at all: wrong address, server down, network."""


class ApiError(ClientError):
    """The server answered with an error; `detail` is its JSON `detail` (a string, or
    for 422 the list of {loc, msg, type} naming each bad field)."""

    def __init__(self, status_code: int, detail: Any, method: str = "", path: str = ""):
        self.status_code, self.detail, self.method, self.path = status_code, detail, method, path
        where = f" from {method} {path}" if method else ""
        super().__init__(f"HTTP {status_code}{where}: {describe(detail)}")


class Unauthorized(ApiError):
    """401: the server has a token and this client sent none or another one."""


class NotFound(ApiError):
    """404: no such run, sweep, study, preset or file."""


class Conflict(ApiError):
    """409: not possible in the current state (e.g. cancelling a finished run)."""


class InvalidRequest(ApiError):
    """422: a bad field; `fields` lists their dotted places, e.g. ["config.n_e"]."""

    @property
    def fields(self) -> list[str]:
        if not isinstance(self.detail, list):
            return []
        return [".".join(str(p) for p in item.get("loc", [])[1:]) for item in self.detail if isinstance(item, dict)]


_ERRORS: dict[int, type[ApiError]] = {401: Unauthorized, 404: NotFound, 409: Conflict, 422: InvalidRequest}


def describe(detail: Any) -> str:
    """A 422's field list as `config.n_e: must be positive`; anything else as text."""
    if isinstance(detail, list):
        parts = []
        for item in detail:
            if isinstance(item, dict):
                loc = ".".join(str(p) for p in item.get("loc", [])[1:]) or "request"
                parts.append(f"{loc}: {item.get('msg', item)}")
            else:
                parts.append(str(item))
        return "; ".join(parts)
    return str(detail)


class Event(NamedTuple):
    """One Server-Sent Event of a followed run: `state` (data: id, state, progress,
    error, n_epochs), `epoch` (data: that epoch's metrics record) or `end`."""
    name: str
    data: dict[str, Any]


def parse_sse(lines: Iterator[str]) -> Iterator[tuple[str, dict[str, Any]]]:
    """(event, JSON data) from Server-Sent Events lines; comments (keep-alives) skipped."""
    event, data = "message", []
    for line in lines:
        if line.startswith(":"):
            continue  # keep-alive comment
        if not line:
            if data:
                yield event, json.loads("\n".join(data))
            event, data = "message", []
        elif line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())
    if data:
        yield event, json.loads("\n".join(data))


def _id(item: str | BaseModel) -> str:
    return item if isinstance(item, str) else item.id  # type: ignore[attr-defined]


class Client:
    """A connection to one spikeboard server. Use it as a context manager, or call close().

    url: the server, default `SPIKEBOARD_URL` or http://127.0.0.1:8000.
    token: bearer token for servers started with --token, default `SPIKEBOARD_TOKEN`.
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout_s: float = 30.0):
        self.url = (url or os.environ.get("SPIKEBOARD_URL") or DEFAULT_URL).rstrip("/")
        token = token if token is not None else os.environ.get("SPIKEBOARD_TOKEN") or None
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # --- transport ------------------------------------------------------------------------
    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"no answer from {self.url}: {exc}") from exc
        _raise_for_error(response, method, path)
        return response

    def _get(self, model: type[Model], path: str, **params: Any) -> Model:
        params = {k: v.value if hasattr(v, "value") else v for k, v in params.items() if v is not None}
        return model.model_validate(self._send("GET", path, params=params).json())

    def _post(self, model: type[Model], path: str, body: dict[str, Any] | None = None) -> Model:
        return model.model_validate(self._send("POST", path, json=body).json())

    # --- server ---------------------------------------------------------------------------
    def health(self) -> Health:
        return self._get(Health, "/api/health")

    # --- the queue ------------------------------------------------------------------------
    def queue(self) -> QueuePublic:
        return self._get(QueuePublic, "/api/queue")

    def pause_queue(self) -> QueuePublic:
        """No queued run starts until `resume_queue()`; running runs go on."""
        return self._post(QueuePublic, "/api/queue/pause")

    def resume_queue(self) -> QueuePublic:
        return self._post(QueuePublic, "/api/queue/resume")

    # --- runs -----------------------------------------------------------------------------
    def submit_run(self, config: dict[str, Any] | None = None, **fields: Any) -> RunPublic:
        """Queue a training run; `config` and/or keyword fields of the engine's Config."""
        return self._post(RunPublic, "/api/runs", {"config": {**(config or {}), **fields}})

    def get_run(self, run: str | RunPublic) -> RunPublic:
        return self._get(RunPublic, f"/api/runs/{_id(run)}")

    def list_runs(self, state: RunState | str | None = None, kind: RunKind | str | None = None,
                  sweep_id: str | None = None, limit: int = 100, offset: int = 0) -> RunsPublic:
        """Newest first; `.data` is the page, `.count` the total matching the filters."""
        return self._get(RunsPublic, "/api/runs", state=state, kind=kind, sweep_id=sweep_id,
                         limit=limit, offset=offset)

    def cancel(self, run: str | RunPublic) -> RunPublic:
        """Queued: cancelled at once; running: within seconds; finished: Conflict."""
        return self._post(RunPublic, f"/api/runs/{_id(run)}/cancel")

    def move_to_front(self, run: str | RunPublic) -> RunPublic:
        """A queued run starts next, before every run queued so far; not queued: Conflict."""
        return self._post(RunPublic, f"/api/runs/{_id(run)}/front")

    def requeue(self, run: str | RunPublic) -> RunPublic:
        """A running run goes back to the queue (it stops at its next batch, resumes from its
        checkpoint when it next gets a slot, and waits its turn); not running: Conflict."""
        return self._post(RunPublic, f"/api/runs/{_id(run)}/requeue")

    def rerun(self, run: str | RunPublic) -> RunPublic:
        """A new run with the same config."""
        return self._post(RunPublic, f"/api/runs/{_id(run)}/rerun")

    def delete(self, run: str | RunPublic) -> None:
        """Finished runs only (Conflict otherwise); removes the run's folder too."""
        self._send("DELETE", f"/api/runs/{_id(run)}")

    def submit_analysis(self, run: str | RunPublic, name: str, params: dict[str, Any] | None = None) -> RunPublic:
        """Queue analysis `name` (see `analyses()`) of a succeeded training run."""
        return self._post(RunPublic, f"/api/runs/{_id(run)}/analyses", {"name": name, "params": params or {}})

    def analyses(self) -> list[dict[str, Any]]:
        return self._send("GET", "/api/analyses").json()

    def metrics(self, run: str | RunPublic) -> "pandas.DataFrame":
        """One row per finished epoch; nested per-weight values are columns such as
        `w_norm.W_in` (the same columns as the CSV export)."""
        import pandas

        records = self._get(MetricsPublic, f"/api/runs/{_id(run)}/metrics").data
        if not records:
            return pandas.DataFrame({"epoch": pandas.Series([], dtype="int64")})
        return pandas.json_normalize(records, sep=".")

    def artifacts(self, run: str | RunPublic) -> list[ArtifactPublic]:
        """The files of the run's folder (config.json, metrics.jsonl, artifacts/...)."""
        return self._get(ArtifactsPublic, f"/api/runs/{_id(run)}/artifacts").data

    def download(self, run: str | RunPublic, name: str, dest: str | Path | None = None) -> bytes | Path:
        """File `name` of the run's folder: its bytes, or written to `dest` (a file path,
        or an existing folder to put it in) and that path returned."""
        path = f"/api/runs/{_id(run)}/artifacts/{name}"
        if dest is None:
            return self._send("GET", path).content
        target = Path(dest)
        if target.is_dir():
            target = target / Path(name).name
        return self._stream_to(path, target)

    def backup(self, dest: str | Path) -> Path:
        """The server's whole data directory (its store and every run folder) as one .tar.gz,
        written to the file `dest`, which appears only when whole; `spikeboard restore` serves
        it elsewhere. The server writes the archive before it sends a byte: no read timeout."""
        target = Path(dest)
        if target.is_dir():
            raise ValueError(f"{target} is a directory: name the archive file to write, e.g. {target / 'backup.tar.gz'}")
        partial = target.with_name(target.name + ".partial")
        try:
            self._stream_to("/api/backup", partial, timeout=httpx.Timeout(self._http.timeout.connect, read=None))
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target

    def _stream_to(self, path: str, target: Path, timeout: httpx.Timeout | None = None) -> Path:
        """GET `path` into the file `target` (its folder made), chunk by chunk."""
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            with self._http.stream("GET", path, timeout=timeout or self._http.timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response, "GET", path)
                with open(target, "wb") as out:
                    for chunk in response.iter_bytes():
                        out.write(chunk)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"no answer from {self.url}: {exc}") from exc
        return target

    def follow(self, run: str | RunPublic, timeout_s: float | None = None) -> Iterator[Event]:
        """The run's events as they happen (Server-Sent Events), ending with `end` once it
        is finished. `timeout_s` bounds the wait for each next event (None: no bound)."""
        path = f"/api/runs/{_id(run)}/events"
        try:
            with self._http.stream("GET", path, timeout=httpx.Timeout(timeout_s, connect=10.0)) as response:
                if response.status_code >= 400:
                    response.read()
                    _raise_for_error(response, "GET", path)
                for name, data in parse_sse(response.iter_lines()):
                    yield Event(name, data)
        except httpx.TransportError as exc:
            raise ServerUnreachable(f"no answer from {self.url}: {exc}") from exc

    def wait(self, run: str | RunPublic, timeout_s: float | None = None, poll_s: float = 1.0,
             progress: bool = False) -> RunPublic:
        """Until the run is finished (succeeded, failed or cancelled; no exception for
        those: check `.state`); `progress` shows a tqdm bar of its progress."""
        with _Progress(progress, total=100, unit="%", desc=_id(run)) as bar:
            return self._poll(lambda: self.get_run(run), timeout_s, poll_s,
                              lambda r: bar.show(round(100 * r.progress), r.state.value, epochs=r.n_epochs))

    # --- sweeps ---------------------------------------------------------------------------
    def submit_sweep(self, base: dict[str, Any], grid: dict[str, list[Any]]) -> SweepPublic:
        """One run per point of the grid: {"arch": ["ping", "coba"], "seed": [1, 2]} is four."""
        return self._post(SweepPublic, "/api/sweeps", {"base": base, "grid": grid})

    def get_sweep(self, sweep: str | SweepPublic) -> SweepPublic:
        return self._get(SweepPublic, f"/api/sweeps/{_id(sweep)}")

    def list_sweeps(self, limit: int = 100, offset: int = 0) -> SweepsPublic:
        return self._get(SweepsPublic, "/api/sweeps", limit=limit, offset=offset)

    def cancel_sweep(self, sweep: str | SweepPublic) -> SweepPublic:
        return self._post(SweepPublic, f"/api/sweeps/{_id(sweep)}/cancel")

    def wait_sweep(self, sweep: str | SweepPublic, timeout_s: float | None = None, poll_s: float = 1.0,
                   progress: bool = False) -> SweepPublic:
        """Until every run of the sweep is finished; `progress`: a bar of finished runs."""
        first = self.get_sweep(sweep)
        with _Progress(progress, total=len(first.run_ids), unit="run", desc=f"sweep {first.id}") as bar:
            return self._poll(lambda: self.get_sweep(sweep), timeout_s, poll_s,
                              lambda s: bar.show(_done(s.counts), s.state.value,
                                                 **{k: v for k, v in s.counts.items() if v}))

    # --- studies --------------------------------------------------------------------------
    def study_presets(self) -> StudyPresetsPublic:
        return self._get(StudyPresetsPublic, "/api/studies/presets")

    def submit_study(self, name: str, overrides: dict[str, Any] | None = None,
                     source_run_id: str | None = None) -> StudyPublic:
        """Queue preset `name` (see `study_presets()`); its analyses follow its training runs."""
        return self._post(StudyPublic, f"/api/studies/presets/{name}",
                          {"overrides": overrides or {}, "source_run_id": source_run_id})

    def get_study(self, study: str | StudyPublic) -> StudyPublic:
        return self._get(StudyPublic, f"/api/studies/{_id(study)}")

    def list_studies(self, limit: int = 100, offset: int = 0) -> StudiesPublic:
        return self._get(StudiesPublic, "/api/studies", limit=limit, offset=offset)

    def cancel_study(self, study: str | StudyPublic) -> StudyPublic:
        return self._post(StudyPublic, f"/api/studies/{_id(study)}/cancel")

    def wait_study(self, study: str | StudyPublic, timeout_s: float | None = None, poll_s: float = 1.0,
                   progress: bool = False) -> StudyPublic:
        with _Progress(progress, total=100, unit="%", desc=f"study {_id(study)}") as bar:
            return self._poll(lambda: self.get_study(study), timeout_s, poll_s,
                              lambda s: bar.show(round(100 * s.progress), s.state.value))

    def study_report(self, study: str | StudyPublic) -> dict[str, Any]:
        return self._send("GET", f"/api/studies/{_id(study)}/report").json()

    def download_report(self, study: str | StudyPublic, format: str = "md",
                        dest: str | Path | None = None) -> str | Path:
        """The study's report as Markdown (`md`), CSV (`csv`) or JSON (`json`): its text,
        or written to `dest` (a file path, or a folder) and that path returned."""
        if format not in ("md", "csv", "json"):
            raise ValueError(f"format must be md, csv or json, not {format!r}")
        suffix = "" if format == "json" else f".{format}"
        text = self._send("GET", f"/api/studies/{_id(study)}/report{suffix}").text
        if dest is None:
            return text
        target = Path(dest)
        if target.is_dir():
            target = target / f"study-{_id(study)}.{format}"
        target.write_text(text)
        return target

    # --- FORCE ----------------------------------------------------------------------------
    def force_experiments(self) -> ForceExperimentsPublic:
        return self._get(ForceExperimentsPublic, "/api/force/experiments")

    def submit_force(self, experiment: str, params: dict[str, Any] | None = None) -> RunPublic:
        """Queue FORCE experiment `experiment`; `params["config"]` takes ForceConfig fields.
        It is a run of kind `force`: follow, wait and download work as for training runs."""
        return self._post(RunPublic, "/api/force/runs", {"experiment": experiment, "params": params or {}})

    # --- helpers --------------------------------------------------------------------------
    @staticmethod
    def _poll(read, timeout_s: float | None, poll_s: float, show) -> Any:
        """read() until its item is finished, show()ing each."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            item = read()
            show(item)
            if item.state in FINISHED_STATES:
                return item
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"{item.id} still {item.state.value} after {timeout_s} s")
            time.sleep(poll_s)


def _done(counts: dict[str, int]) -> int:
    return sum(counts.get(s.value, 0) for s in FINISHED_STATES)


class _Progress:
    """A tqdm bar (a widget in notebooks), or nothing when not asked for."""

    def __init__(self, enabled: bool, **options: Any):
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(**options)
        else:
            self.bar = None

    def __enter__(self) -> "_Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()

    def show(self, n: int, state: str, **postfix: Any) -> None:
        if self.bar is not None:
            self.bar.n = n
            self.bar.set_postfix(state=state, **postfix, refresh=False)
            self.bar.refresh()


def _raise_for_error(response: httpx.Response, method: str, path: str) -> None:
    if response.status_code < 400:
        return
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text or response.reason_phrase
    raise _ERRORS.get(response.status_code, ApiError)(response.status_code, detail, method, path)
