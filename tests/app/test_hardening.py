"""Fault and abuse suite (issue 18, docs/RELIABILITY.md): what hand-made input,
a page on another site, a restart or a deleted source can and cannot do.

Most cases talk to the app in process (Starlette's TestClient, real SQLite
store, no worker slots); the Schemathesis run (test_schemathesis.py) fuzzes a
real server. Non-finite and diverged training are in tests/engine/test_divergence.py.
"""

from __future__ import annotations

import json
import sys
import time

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.security import BindRefused, GuardOptions, check_bind, is_loopback, served_hosts
from app.settings import Settings
from jobs.executors.base import Exited
from jobs.models import Conflict, InvalidRequest, RunKind, RunState
from jobs.paths import DataDir
from jobs.scheduler import Scheduler
from jobs.service import JobService
from jobs.store import RunStore

SERVED = "http://127.0.0.1:8000"
SMALL = {"n_e": 20, "n_i": 5, "t_ms": 10.0, "epochs": 1, "tier": "smoke"}


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as browsers and other languages do."""
    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    app = create_app(Settings(data_dir=tmp_path_factory.mktemp("hardening") / "data", workers=0, dashboard=False))
    with TestClient(app, base_url=SERVED) as client:
        yield client


def post_raw(api, path: str, body: str, **headers):
    return api.post(path, content=body.encode(), headers={"content-type": "application/json", **headers})


# --- 1. NaN / Infinity in a body ------------------------------------------------------------

@pytest.mark.parametrize("body, loc", [
    ('{"config": {"n_e": NaN}}', ["body", "config", "n_e"]),
    ('{"config": {"arch": NaN}}', ["body", "config", "arch"]),
    ('{"config": {"trainable": [NaN]}}', ["body", "config", "trainable", "0"]),
    ('{"config": {"colour": Infinity}}', ["body", "config", "colour"]),
    ('{"config": {"lr": -Infinity}}', ["body", "config", "lr"]),
])
def test_nan_in_a_body_is_a_422_in_valid_json(api, body, loc):
    response = post_raw(api, "/api/runs", body)
    assert response.status_code == 422
    detail = strict_json(response.text)["detail"]
    assert loc in [d["loc"] for d in detail]


@pytest.mark.parametrize("path, body", [
    ("/api/sweeps", '{"config": {}, "grid": {"lr": [0.1, NaN]}}'),
    ("/api/studies/presets/nb024", '{"overrides": {"lr": Infinity}}'),
    ("/api/force/runs", '{"experiment": "sine", "params": {"config": {"n": NaN}}}'),
])
def test_nan_anywhere_in_any_body_is_refused(api, path, body):
    response = post_raw(api, path, body)
    assert response.status_code == 422
    strict_json(response.text)
    assert api.get("/api/runs").json()["count"] == 0  # nothing was queued


# --- 2. cross-site pages and DNS rebinding ---------------------------------------------------

def test_a_form_on_another_site_cannot_queue_a_study(api):
    # what an HTML form on any page can send: no preflight, text/plain, no body
    forged = api.post("/api/studies/presets/nb024", headers={"origin": "http://evil.example",
                                                             "content-type": "text/plain"})
    assert forged.status_code == 403 and "evil.example" in forged.json()["detail"]
    no_origin_form = api.post("/api/runs", content=b"config=1",
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert no_origin_form.status_code == 415
    fetch_metadata = api.post("/api/runs", json={"config": SMALL}, headers={"sec-fetch-site": "cross-site"})
    assert fetch_metadata.status_code == 403
    assert api.get("/api/studies").json()["count"] == 0 and api.get("/api/runs").json()["count"] == 0


def test_own_origin_and_scripts_may_post(api):
    own = api.post("/api/runs", json={"config": SMALL}, headers={"origin": SERVED})
    script = api.post("/api/runs", json={"config": SMALL})  # curl, the Python client: no Origin
    assert own.status_code == script.status_code == 201
    for run in (own.json(), script.json()):
        api.post(f"/api/runs/{run['id']}/cancel")


def test_a_foreign_host_header_is_refused(api):
    rebound = api.get("/api/runs", headers={"host": "evil.example:8000"})
    assert rebound.status_code == 400 and "SPIKEBOARD_ALLOWED_HOSTS" in rebound.json()["detail"]
    assert api.get("/api/health", headers={"host": "localhost:8000"}).status_code == 200


def test_settings_widen_hosts_and_origins(tmp_path, monkeypatch):
    monkeypatch.setenv("SPIKEBOARD_ALLOWED_HOSTS", "spikes.lab.example")
    monkeypatch.setenv("SPIKEBOARD_ALLOWED_ORIGINS", "https://notebook.lab.example")
    app = create_app(Settings(data_dir=tmp_path / "data", workers=0, dashboard=False))
    with TestClient(app, base_url="http://spikes.lab.example") as client:
        assert client.get("/api/health").status_code == 200
        allowed = client.post("/api/runs", json={"config": SMALL},
                              headers={"origin": "https://notebook.lab.example"})
        assert allowed.status_code == 201
    assert served_hosts("0.0.0.0", GuardOptions()) is None  # wildcard bind: the token guards it


# --- 3. sizes bounded by the machine ----------------------------------------------------------

@pytest.mark.parametrize("config, field, words", [
    ({"n_e": 10**7}, "n_e", "GB of memory"),
    ({"batch_size": 10**9}, "batch_size", "GB of memory"),
    ({"epochs": 10**9}, "epochs", "sample-steps"),
    ({"t_ms": 1e9}, "t_ms", "2^31 - 1 steps"),
    ({"t_ms": 1e6}, "t_ms", "GB of memory"),
    ({"n_e": 10**30}, "n_e", "2^31"),
    ({"dt_ms": 1e-300}, "dt_ms", ">="),
    ({"seed": 2**70}, "seed", "2^63"),
])
def test_oversized_runs_are_refused_with_estimate_and_limit(api, config, field, words):
    response = api.post("/api/runs", json={"config": config})
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "config", field] and words in detail[0]["msg"]
    if words != ">=" and "2^" not in words:
        assert "allows" in detail[0]["msg"]  # the estimate and the limit


def test_sweeps_and_studies_are_bounded_per_run_and_in_total(api):
    huge_grid = api.post("/api/sweeps", json={"config": SMALL, "grid": {"seed": list(range(1000)),
                                                                        "lr": [0.001 * k for k in range(1, 1001)]}})
    assert huge_grid.status_code == 422 and "expands to 1000000 runs" in huge_grid.text
    oversized_child = api.post("/api/sweeps", json={"config": SMALL, "grid": {"n_e": [20, 10**7]}})
    assert oversized_child.status_code == 422
    assert oversized_child.json()["detail"][0]["loc"] == ["body", "grid", "n_e"]
    total = api.post("/api/sweeps", json={"config": {**SMALL, "backend": "fast", "t_ms": 200.0, "epochs": 40_000},
                                          "grid": {"seed": list(range(200))}})
    assert total.status_code == 422 and "in all" in total.text
    study = api.post("/api/studies/presets/nb024", json={"overrides": {"epochs": 10**9}})
    assert study.status_code == 422 and "sample-steps" in study.text
    assert api.get("/api/sweeps").json()["count"] == 0


# --- 8. restarts do not use up the retry budget -------------------------------------------------

class _NoExecutor:
    def poll(self):
        return []

    def free_slots(self):
        return 0

    def is_alive(self, run_id):
        return False

    def shutdown(self, grace_s):
        return []


def test_restarts_do_not_count_as_crashes(tmp_path):
    store = RunStore(tmp_path / "runs.db")
    run = store.create_run(RunKind.TRAIN, SMALL)
    scheduler = Scheduler(store, _NoExecutor(), max_attempts=3)
    for _ in range(4):  # four server restarts, each finding the run's worker gone
        claimed = store.claim_next()
        assert scheduler.recover() == [run.id]
    claimed = store.claim_next()
    assert claimed.attempt == 5 and claimed.restarts == 4 and claimed.crashes == 1
    scheduler.settle(Exited(run.id, claimed.attempt, -9))  # one real crash: retried, not failed
    assert store.get_run(run.id).state is RunState.QUEUED
    for _ in range(2):
        claimed = store.claim_next()
        scheduler.settle(Exited(run.id, claimed.attempt, -9))
    failed = store.get_run(run.id)
    assert failed.state is RunState.FAILED and "crash 3 of 3" in failed.error


# --- 9. a source cannot be deleted under its analysis ------------------------------------------

def test_a_source_run_with_a_queued_analysis_cannot_be_deleted(tmp_path):
    data = DataDir.at(tmp_path / "data")
    jobs = JobService(RunStore(data.db_path), data)
    source = jobs.submit_run(SMALL)
    claimed = jobs.store.claim_next()
    jobs.store.transition(source.id, RunState.SUCCEEDED, attempt=claimed.attempt)
    analysis = jobs.submit_analysis(source.id, "coupling_sweep", {})
    with pytest.raises(Conflict, match=analysis.id):
        jobs.delete_run(source.id)
    jobs.cancel_run(analysis.id)
    jobs.delete_run(source.id)  # nothing reads it any more


# --- 11. binding and the bearer token ---------------------------------------------------------

def test_public_bind_without_token_is_refused_unless_explicit():
    assert is_loopback("127.0.0.2") and is_loopback("::1") and is_loopback("localhost")
    check_bind("127.0.0.2", None, environ={})  # loopback: fine
    check_bind("0.0.0.0", "a-long-token", environ={})
    with pytest.raises(BindRefused, match="without a token"):
        check_bind("0.0.0.0", None, environ={})
    with pytest.raises(BindRefused):
        check_bind("192.168.1.10", None, environ={})
    check_bind("0.0.0.0", None, environ={"SPIKEBOARD_ALLOW_PUBLIC_WITHOUT_TOKEN": "1"})


def test_wrong_bearer_tokens_are_rate_limited(tmp_path):
    app = create_app(Settings(data_dir=tmp_path / "data", workers=0, dashboard=False, token="right-token-123"))
    limit = GuardOptions().auth_failures_per_minute
    with TestClient(app, base_url=SERVED) as client:
        codes = [client.post("/api/runs", json={"config": SMALL},
                             headers={"authorization": f"Bearer wrong-{i}"}).status_code for i in range(limit + 5)]
        assert codes[:limit] == [401] * limit and set(codes[limit:]) == {429}


# --- 12 and issue 16 item 12: the API says what it does ------------------------------------------

def test_a_422_names_every_bad_field(api):
    response = api.post("/api/runs", json={"config": {"n_e": -1, "lr": -2.0, "batch_size": 0}})
    assert response.status_code == 422
    locs = [d["loc"] for d in response.json()["detail"]]
    assert locs == [["body", "config", "n_e"], ["body", "config", "batch_size"], ["body", "config", "lr"]]


def test_sweeps_take_config_and_still_accept_base(api):
    new = api.post("/api/sweeps", json={"config": SMALL, "grid": {"seed": [1, 2]}})
    old = api.post("/api/sweeps", json={"base": SMALL, "grid": {"seed": [1]}})
    assert new.status_code == old.status_code == 201 and new.json()["base"]["n_e"] == 20
    both = api.post("/api/sweeps", json={"config": SMALL, "base": SMALL, "grid": {"seed": [1]}})
    assert both.status_code == 422
    bad = api.post("/api/sweeps", json={"config": {**SMALL, "lr": -1.0}, "grid": {"seed": [1]}})
    assert bad.json()["detail"][0]["loc"] == ["body", "config", "lr"]
    for sweep in (new.json(), old.json()):
        api.post(f"/api/sweeps/{sweep['id']}/cancel")
    schema = api.get("/openapi.json").json()["components"]["schemas"]["SweepCreate"]["properties"]
    assert schema["base"].get("deprecated") is True


def test_missing_artifact_rerun_source_and_analyses(api):
    run = api.post("/api/runs", json={"config": SMALL}).json()
    missing = api.get(f"/api/runs/{run['id']}/artifacts/nope.npz")
    assert missing.status_code == 404 and missing.json()["detail"] == f"artifact nope.npz not found in run {run['id']}"
    api.post(f"/api/runs/{run['id']}/cancel")
    again = api.post(f"/api/runs/{run['id']}/rerun").json()
    assert again["source_run_id"] == run["id"]
    api.post(f"/api/runs/{again['id']}/cancel")
    analyses = api.get("/api/analyses").json()
    assert analyses["count"] == len(analyses["data"]) and {"name", "description", "defaults"} <= set(analyses["data"][0])
    schema = api.get("/openapi.json").json()
    assert schema["paths"]["/api/analyses"]["get"]["responses"]["200"]["content"]["application/json"]["schema"] \
        == {"$ref": "#/components/schemas/AnalysesPublic"}


def test_studies_are_listed_as_studies_and_presets_apart(api):
    presets = api.get("/api/studies/presets").json()
    assert "nb024" in {p["name"] for p in presets["data"]}
    studies = api.get("/api/studies").json()
    assert set(studies) == {"data", "count"}
    assert all("members" in s for s in studies["data"])
    paths = api.get("/openapi.json").json()["paths"]
    assert paths["/api/studies/runs"]["get"]["deprecated"] is True
    assert "deprecated" not in paths["/api/studies"]["get"]


def test_an_out_of_range_raster_sample_is_named_as_a_query_parameter(api):
    run = api.post("/api/runs", json={"config": SMALL}).json()
    jobs = api.app.state.services.jobs

    def out_of_range(*args, **kwargs):
        raise InvalidRequest("sample", "index 499 is out of range for 100 test images")
    original, jobs.spike_raster = jobs.spike_raster, out_of_range
    try:
        response = api.get(f"/api/runs/{run['id']}/raster", params={"sample": 499})
    finally:
        jobs.spike_raster = original
        api.post(f"/api/runs/{run['id']}/cancel")
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "sample"]


def test_error_statuses_are_documented(api):
    paths = api.get("/openapi.json").json()["paths"]
    assert {"401", "403", "415", "422", "429"} <= set(paths["/api/runs"]["post"]["responses"])
    assert {"404", "409"} <= set(paths["/api/runs/{run_id}"]["delete"]["responses"])
    report = paths["/api/studies/{study_id}/report.md"]["get"]["responses"]
    assert list(report["200"]["content"]) == ["text/markdown"] and list(report["404"]["content"]) == ["application/json"]


# --- 4, 5, 10, 11: the dashboard's handlers ------------------------------------------------------

@pytest.fixture(scope="module")
def dashboard(tmp_path_factory):
    import os

    os.environ["SPIKEBOARD_MAX_UNCONNECTED_PER_CLIENT"] = "2"
    os.environ["SPIKEBOARD_MAX_SESSIONS"] = "3"
    try:
        app = create_app(Settings(data_dir=tmp_path_factory.mktemp("dash") / "data", workers=0))
    finally:
        del os.environ["SPIKEBOARD_MAX_UNCONNECTED_PER_CLIENT"], os.environ["SPIKEBOARD_MAX_SESSIONS"]
    with TestClient(app, base_url=SERVED) as client:
        yield client


def test_components_serve_only_panels_own_assets(dashboard):
    sys.modules.pop("this", None)
    for path in ("/components/this/x/y/z", "/components/this/x", "/components/os/path/css/x",
                 "/components/panel.layout/NoSuch/_css/x.css", "/components/panel.layout/Column/evil/x"):
        response = dashboard.get(path)
        assert 400 <= response.status_code < 500, path
        strict_json(response.text)
    assert "this" not in sys.modules  # the URL imported nothing


def test_a_malformed_session_token_is_refused_not_a_500(dashboard):
    from starlette.websockets import WebSocketDisconnect

    for subprotocols in (["bokeh", "not-a-token"], ["bokeh", "e30.e30.e30"], ["bokeh"], ["other", "x"]):
        with pytest.raises(WebSocketDisconnect) as refused:
            with dashboard.websocket_connect("/ws", subprotocols=subprotocols):
                pass
        assert refused.value.code == 1008


def test_unconnected_page_sessions_are_capped_and_expire(dashboard):
    guard = dashboard.app.state.guard

    def sessions() -> int:
        return dashboard.get("/api/dashboard/sessions").json()["sessions"]
    assert dashboard.get("/").status_code == 200 and dashboard.get("/compare").status_code == 200
    capped = dashboard.get("/")
    assert capped.status_code == 429 and capped.headers["retry-after"]  # per client
    guard.unconnected._events.clear()  # as if they had connected
    assert dashboard.get("/").status_code == 200
    guard.unconnected._events.clear()
    assert sessions() == 3 and dashboard.get("/").status_code == 503  # in total
    deadline = time.monotonic() + 20
    while sessions() and time.monotonic() < deadline:  # never connected: expired within seconds
        time.sleep(0.5)
    assert sessions() == 0 and time.monotonic() < deadline


def test_the_run_page_shows_the_divergence_flag():
    from app.dashboard.run_page import divergence_html

    assert divergence_html([{"epoch": 1, "divergence": None}]) == ""
    shown = divergence_html([{"epoch": 2, "divergence": "E rate 491 Hz is at the refractory ceiling (500 Hz)"}])
    assert "Diverged" in shown and "epoch 2" in shown and "refractory ceiling" in shown


# --- GET /api/backup: it writes a copy of the whole store ------------------------------------

def test_a_backup_without_room_to_write_it_is_a_503_that_says_why(api, tmp_path, monkeypatch):
    """GET /api/backup writes the archive to the temp folder first: one that is missing (or
    full) is said as a 503 naming the cause, never a 500, and leaves nothing behind."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    response = api.get("/api/backup")
    assert response.status_code == 503
    assert response.json()["detail"].startswith("backup failed: [Errno 2] No such file or directory")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr("jobs.backup._snapshot_store", lambda db, snapshot: (_ for _ in ()).throw(
        OSError(28, "No space left on device")))
    response = api.get("/api/backup")
    assert response.status_code == 503
    assert response.json()["detail"] == "backup failed: [Errno 28] No space left on device"
    assert list(tmp_path.iterdir()) == []
    assert api.get("/api/backup").status_code == 503  # each failure let go of the one-at-a-time lock


def test_a_backup_is_one_at_a_time_whole_and_never_started_by_another_site(api, tmp_path, monkeypatch):
    import tempfile

    from app.api import backup

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    # a page on another site cannot make a visitor's browser write copies of the store
    assert api.get("/api/backup", headers={"origin": "http://evil.example"}).status_code == 403
    assert api.get("/api/backup", headers={"sec-fetch-site": "cross-site"}).status_code == 403
    with backup._writing:  # another backup is being written
        busy = api.get("/api/backup")
    assert busy.status_code == 429 and busy.headers["retry-after"] == str(backup.RETRY_AFTER_S)
    # no byte ranges: each request is a new archive, so a resumed download would splice two
    whole = api.get("/api/backup", headers={"range": "bytes=0-9"})
    assert whole.status_code == 200 and int(whole.headers["content-length"]) == len(whole.content) > 10
    assert whole.content[:2] == b"\x1f\x8b" and "accept-ranges" not in whole.headers  # gzip, from its start
    assert list(tmp_path.iterdir()) == []  # sent, then removed
