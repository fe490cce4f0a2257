"""Request validation, status codes and details, against a queue-only server."""

import httpx
import pytest

from tests.conftest import small_config


@pytest.fixture
def http(queue_only_server):
    with httpx.Client(base_url=queue_only_server.url, timeout=10) as client:
        yield client


def _submit(http, **overrides):
    response = http.post("/api/runs", json={"config": small_config(**overrides)})
    assert response.status_code == 201, response.text
    return response.json()


def test_submit_stores_the_resolved_config(http):
    run = _submit(http, arch="coba")
    assert run["state"] == "queued" and run["kind"] == "train"
    assert run["config"]["ei_strength"] == 0.0 and run["config"]["n_e"] == 40
    assert http.get(f"/api/runs/{run['id']}").json()["id"] == run["id"]


@pytest.mark.parametrize("config,loc", [
    ({"n_e": -5}, ["body", "config", "n_e"]),            # engine validation
    ({"n_e": 4.5}, ["body", "config", "n_e"]),           # type, strict
    ({"arch": "lif"}, ["body", "config", "arch"]),
    ({"no_such_field": 1}, ["body", "config", "no_such_field"]),
    ({"v_th_mv": -70.0}, ["body", "config", "v_th_mv"]),
    ({"trainable": ["W_xx"]}, ["body", "config", "trainable"]),
])
def test_bad_config_is_422_naming_the_field(http, config, loc):
    response = http.post("/api/runs", json={"config": config})
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]][0] == loc


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/runs/nope"), ("GET", "/api/runs/nope/metrics"), ("GET", "/api/runs/nope/events"),
    ("POST", "/api/runs/nope/cancel"), ("POST", "/api/runs/nope/rerun"), ("DELETE", "/api/runs/nope"),
    ("GET", "/api/runs/nope/artifacts"), ("GET", "/api/sweeps/nope"),
])
def test_unknown_ids_are_404(http, method, path):
    response = http.request(method, path)
    assert response.status_code == 404 and "nope" in response.json()["detail"]


def test_cancel_and_delete_follow_the_state_machine(http):
    run = _submit(http)
    assert http.delete(f"/api/runs/{run['id']}").status_code == 409  # queued: cancel first
    assert http.post(f"/api/runs/{run['id']}/cancel").json()["state"] == "cancelled"
    again = http.post(f"/api/runs/{run['id']}/cancel")
    assert again.status_code == 409 and "cancelled" in again.json()["detail"]
    assert http.delete(f"/api/runs/{run['id']}").status_code == 204
    assert http.get(f"/api/runs/{run['id']}").status_code == 404


def test_rerun_queues_a_new_run_with_the_same_config(http):
    run = _submit(http, seed=7)
    again = http.post(f"/api/runs/{run['id']}/rerun").json()
    assert again["id"] != run["id"] and again["config"] == run["config"] and again["state"] == "queued"


def test_list_filters_and_pages(http):
    ids = {_submit(http, seed=100 + i)["id"] for i in range(3)}
    page = http.get("/api/runs", params={"state": "queued", "kind": "train", "limit": 2}).json()
    assert len(page["data"]) == 2 and page["count"] >= 3
    everything = http.get("/api/runs", params={"limit": 1000}).json()
    assert ids <= {r["id"] for r in everything["data"]}
    assert http.get("/api/runs", params={"state": "bogus"}).status_code == 422
    assert http.get("/api/runs", params={"limit": 0}).status_code == 422


def test_analysis_needs_a_succeeded_train_run(http):
    run = _submit(http)
    response = http.post(f"/api/runs/{run['id']}/analyses", json={"name": "coupling_sweep", "params": {}})
    assert response.status_code == 409 and "succeeded" in response.json()["detail"]


def test_raster_of_an_untrained_run_is_409_and_bad_factors_422(http):
    run = _submit(http)
    assert http.get(f"/api/runs/{run['id']}/raster").status_code == 409
    response = http.get(f"/api/runs/{run['id']}/raster", params={"ei_factor": -1})
    assert response.status_code == 422 and response.json()["detail"][0]["loc"] == ["query", "ei_factor"]


@pytest.mark.parametrize("name", ["../../spikeboard.db", "..%2F..%2Fspikeboard.db", "/etc/passwd",
                                  "checkpoints/../../other", "%2Fetc%2Fpasswd"])
def test_artifacts_never_escape_the_run_folder(http, name):
    run = _submit(http)
    response = http.get(f"/api/runs/{run['id']}/artifacts/{name}")
    assert response.status_code == 404


def test_sweep_validation_names_the_field(http):
    response = http.post("/api/sweeps", json={"base": small_config(), "grid": {"n_e": [10, -1]}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "grid", "n_e"]
    empty = http.post("/api/sweeps", json={"base": small_config(), "grid": {}})
    assert empty.status_code == 422


def test_cancel_a_sweep_cancels_its_children(http):
    sweep = http.post("/api/sweeps", json={"base": small_config(), "grid": {"seed": [1, 2]}}).json()
    assert sweep["state"] == "running" and sweep["counts"]["queued"] == 2
    cancelled = http.post(f"/api/sweeps/{sweep['id']}/cancel").json()
    assert cancelled["state"] == "cancelled" and cancelled["counts"]["cancelled"] == 2
    assert http.post(f"/api/sweeps/{sweep['id']}/cancel").status_code == 409
    assert sweep["id"] in {s["id"] for s in http.get("/api/sweeps").json()["data"]}


def test_openapi_and_health(http):
    assert http.get("/api/health").json()["status"] == "ok"
    schema = http.get("/openapi.json").json()
    assert "/api/runs/{run_id}/events" in schema["paths"]
    assert http.get("/docs").status_code == 200
    assert "coupling_sweep" in {a["name"] for a in http.get("/api/analyses").json()["data"]}


def test_token_guards_mutations_only(server_factory, tmp_path):
    server = server_factory(tmp_path / "auth", workers=0, token="s3cret-token")
    with httpx.Client(base_url=server.url, timeout=10) as http:
        body = {"config": small_config()}
        assert http.post("/api/runs", json=body).status_code == 401
        wrong = {"Authorization": "Bearer nope-nope"}
        assert http.post("/api/runs", json=body, headers=wrong).status_code == 401
        assert http.get("/api/runs").status_code == 200
        ok = http.post("/api/runs", json=body, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 201
        assert http.delete(f"/api/runs/{ok.json()['id']}").status_code == 401
