"""FORCE experiments through the real server: listing, validation, and a tiny
Q x G grid queued, run by a worker and read back through the artifact endpoints."""

import json

import httpx

from jobs.models import RunState

TINY = {"n": 30, "warmup_s": 0.02, "learn_s": 0.05, "test_s": 0.02}


def test_experiments_are_listed_with_defaults(queue_only_server):
    body = httpx.get(queue_only_server.url + "/api/force/experiments", timeout=30).json()
    names = {e["name"] for e in body["data"]}
    assert names == {"train", "alpha", "grid", "transfer", "transfer_protocols", "size", "bias_variance",
                     "pca"} and body["count"] == 8
    grid = next(e for e in body["data"] if e["name"] == "grid")
    assert grid["defaults"]["config"]["p"] == 0.4 and grid["defaults"]["config"]["alpha"] == 5e-6


def test_bad_requests_name_the_field(queue_only_server):
    url = queue_only_server.url + "/api/force/runs"
    cases = [({"experiment": "grid", "params": {"config": {"n": -5}}}, ["body", "params", "config", "n"]),
             ({"experiment": "grid", "params": {"q_values": "many"}}, ["body", "params", "q_values"]),
             ({"experiment": "train", "params": {"bogus": 1}}, ["body", "params", "bogus"]),
             ({"experiment": "nope"}, ["body", "experiment"])]
    for body, loc in cases:
        response = httpx.post(url, json=body, timeout=30)
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == loc


def test_tiny_grid_completes_through_the_api(server_factory):
    server = server_factory()
    params = {"config": TINY, "q_values": [5.0, 10.0], "g_values": [0.05, 0.1], "batch": 2}
    response = httpx.post(server.url + "/api/force/runs", json={"experiment": "grid", "params": params}, timeout=30)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["kind"] == "force" and run["config"]["experiment"] == "grid"
    assert run["config"]["params"]["config"]["n"] == 30  # stored complete: defaults filled in
    with server.client() as api:
        done = api.wait(run["id"], timeout_s=180)
        assert done.state == RunState.SUCCEEDED, done.error
        assert done.progress == 1.0
        assert "result.json" in {a.name for a in api.artifacts(run["id"])}
        result = json.loads(api.download(run["id"], "result.json"))
    assert result["complete"] and result["experiment"] == "grid"
    assert sorted((p["q"], p["g"]) for p in result["points"]) == [(5.0, 0.05), (5.0, 0.1), (10.0, 0.05), (10.0, 0.1)]
    assert all(set(p) >= {"lif", "rate", "decoder_fit"} for p in result["points"])
