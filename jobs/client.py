"""A small untyped client of the REST API (dicts in, dicts out).

Deprecated for scripts: use `from spikeboard import Client` (app/client.py), which
returns the API's typed models, follows and waits with a progress bar, and gives
metrics as a DataFrame. That client needs the API's pydantic models, which live in
app/, and the job layer does not import app/, so it cannot be re-exported from
here; this module stays as the test suite's low-level helper.

    from jobs.client import Client
    with Client("http://127.0.0.1:8000", token=None) as api:
        run = api.submit({"arch": "ping", "epochs": 3})
        for event, data in api.follow(run["id"]):
            print(event, data)
        print(api.metrics(run["id"]))
"""

from __future__ import annotations

import json
import time
from typing import Any, Iterator

import httpx

FINISHED = ("succeeded", "failed", "cancelled")


class ApiError(Exception):
    def __init__(self, status_code: int, detail: Any):
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code, self.detail = status_code, detail


class Client:
    def __init__(self, base_url: str, token: str | None = None, timeout_s: float = 30.0):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(base_url=base_url.rstrip("/"), headers=headers, timeout=timeout_s)

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._http.request(method, path, **kwargs)
        if response.status_code >= 400:
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ApiError(response.status_code, detail)
        if response.status_code == 204:
            return None
        return response.json()

    # --- runs -------------------------------------------------------------------
    def submit(self, config: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/api/runs", json={"config": config})

    def get(self, run_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/runs/{run_id}")

    def list(self, **filters: Any) -> dict[str, Any]:
        params = {k: v for k, v in filters.items() if v is not None}
        return self._call("GET", "/api/runs", params=params)

    def metrics(self, run_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/runs/{run_id}/metrics")["data"]

    def metrics_csv(self, run_id: str) -> str:
        response = self._http.get(f"/api/runs/{run_id}/metrics", params={"format": "csv"})
        response.raise_for_status()
        return response.text

    def cancel(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/runs/{run_id}/cancel")

    def rerun(self, run_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/runs/{run_id}/rerun")

    def delete(self, run_id: str) -> None:
        self._call("DELETE", f"/api/runs/{run_id}")

    def artifacts(self, run_id: str) -> list[dict[str, Any]]:
        return self._call("GET", f"/api/runs/{run_id}/artifacts")["data"]

    def download(self, run_id: str, name: str) -> bytes:
        """One file of the run's folder, e.g. "artifacts/rates.npz" or "result.json"."""
        response = self._http.get(f"/api/runs/{run_id}/artifacts/{name}")
        if response.status_code >= 400:
            raise ApiError(response.status_code, response.text)
        return response.content

    def analyse(self, run_id: str, name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return self._call("POST", f"/api/runs/{run_id}/analyses", json={"name": name, "params": params or {}})

    def follow(self, run_id: str, timeout_s: float | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
        """(event, data) from the run's Server-Sent Events until it is finished."""
        timeout = httpx.Timeout(timeout_s, connect=10.0) if timeout_s else httpx.Timeout(None, connect=10.0)
        with self._http.stream("GET", f"/api/runs/{run_id}/events", timeout=timeout) as response:
            if response.status_code >= 400:
                response.read()
                raise ApiError(response.status_code, response.text)
            yield from parse_sse(response.iter_lines())

    def wait(self, run_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> dict[str, Any]:
        """Poll until the run is finished; returns the run."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.get(run_id)
            if run["state"] in FINISHED:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_id} still {run['state']} after {timeout_s} s")
            time.sleep(poll_s)

    # --- sweeps ---------------------------------------------------------------------
    def sweep(self, base: dict[str, Any], grid: dict[str, list[Any]]) -> dict[str, Any]:
        return self._call("POST", "/api/sweeps", json={"base": base, "grid": grid})

    def get_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._call("GET", f"/api/sweeps/{sweep_id}")

    def cancel_sweep(self, sweep_id: str) -> dict[str, Any]:
        return self._call("POST", f"/api/sweeps/{sweep_id}/cancel")

    def wait_sweep(self, sweep_id: str, timeout_s: float = 600.0, poll_s: float = 0.5) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while (sweep := self.get_sweep(sweep_id))["state"] not in FINISHED:
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {sweep_id} still {sweep['state']} after {timeout_s} s")
            time.sleep(poll_s)
        return sweep


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
