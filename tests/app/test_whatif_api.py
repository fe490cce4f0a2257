"""POST /api/runs/{id}/whatif against a real server, on a run trained at the smoke tier."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from engine import train
from engine.config import Config
from jobs.models import RunState
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore
from tests.app.conftest import REPO, Server, free_port
from tests.conftest import small_config

# 200 E / 50 I with the canonical network's summed coupling per cell (W_ei x 4, W_ie x 4):
# small, but E is held well below its open-loop rate by inhibition
PING_200 = dict(n_e=200, n_i=50, ei_strength=0.2, ie_strength=4.0, t_ms=100.0, epochs=1, backend="fast")


def patient_server(data_dir: Path, dashboard: bool = False, start_s: float = 180.0) -> Server:
    """conftest's server (no workers), given longer to start: on a loaded 2-core machine
    the imports alone (torch, numba, Panel) can take over conftest's 30 s."""
    port = free_port()
    log = open(data_dir / "server.log", "ab")
    process = subprocess.Popen([sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(port),
                                "--data-dir", str(data_dir), "--workers", "0"], cwd=REPO, stdout=log,
                               stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(REPO), "SPIKEBOARD_DASHBOARD": "1" if dashboard else "0"})
    server = Server(f"http://127.0.0.1:{port}", data_dir, process)
    deadline = time.monotonic() + start_s
    while process.poll() is None and time.monotonic() < deadline:
        try:
            if httpx.get(server.url + "/api/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server did not start: {(data_dir / 'server.log').read_text()[-2000:]}")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A server (no workers) over a store holding one succeeded 1-epoch run of 100 ms trials."""
    data = DataDir.at(tmp_path_factory.mktemp("whatif") / "data")
    store = RunStore(data.db_path)
    run = JobService(store, data).submit_run(small_config(**PING_200))
    train(Config.from_dict(run.config), data.run_dir(run.id))
    store.claim_next()
    store.transition(run.id, RunState.SUCCEEDED)
    store.close()
    server = patient_server(data.root)
    with httpx.Client(base_url=server.url, timeout=60) as http:
        yield http, run
    server.stop()


def post(http, run_id, **body):
    return http.post(f"/api/runs/{run_id}/whatif", json=body)


def test_trained_point_answers_with_rates_spectrum_and_accuracy(trained):
    http, run = trained
    response = post(http, run.id, n_images=8)
    assert response.status_code == 200, response.text
    r = response.json()
    # omitted knobs are the trained values
    assert r["knobs"] == {"w_ei_scale": 1.0, "w_ie_scale": 1.0, "w_in_scale": 1.0, "max_rate_hz": 100.0,
                          "tau_gaba_ms": 9.0, "sample": 0, "n_images": 8}
    assert r["raster"] is None  # only on request
    assert r["n_images"] == 8 and r["n_e"] == 200 and r["n_i"] == 50
    assert len(r["population_rate_e_hz"]) == len(r["population_rate_i_hz"]) == len(r["rate_time_ms"]) == 100
    assert sum(r["cell_rates_e"]["counts"]) == 200 and sum(r["cell_rates_i"]["counts"]) == 50
    assert len(r["cell_rates_e"]["edges"]) == len(r["cell_rates_e"]["counts"]) + 1
    p = r["accuracy_pct"] / 100
    assert r["accuracy_stderr_pct"] == pytest.approx(100 * (p * (1 - p) / 8) ** 0.5)
    low, high = r["accuracy_ci95_pct"]
    assert low <= r["accuracy_pct"] <= high and high - low > 10  # 8 images: a wide interval, never 0
    assert r["rate_e_hz"] > 0 and r["spectrum"]["peak_hz"] == r["gamma_peak_hz"]
    assert r["correct"] == (r["label"] == r["predicted"])
    assert (r["weights"], r["weights_epoch"]) == ("final", 1)  # which weights: the finished run's


def test_a_run_still_training_answers_with_its_latest_checkpoint_and_says_which(trained, tmp_path_factory):
    """A run without final weights (still training) is simulated at its last checkpoint; the
    answer names the epoch, as an analysis of `weights=last` does."""
    import shutil

    http, run = trained
    data = next(tmp_path_factory.getbasetemp().glob("whatif*/data"))
    training = http.post("/api/runs", json={"config": small_config(**PING_200)}).json()
    shutil.copytree(data / "runs" / run.id, data / "runs" / training["id"], dirs_exist_ok=True)
    (data / "runs" / training["id"] / "artifacts" / "weights_final.npz").unlink()
    r = post(http, training["id"], n_images=2).json()
    assert (r["weights"], r["weights_epoch"]) == ("last", 1) and r["rate_e_hz"] > 0
    http.post(f"/api/runs/{training['id']}/cancel")


def test_raster_comes_as_event_lists_on_request(trained):
    http, run = trained
    r = post(http, run.id, sample=3, n_images=2, raster=True).json()
    events = r["raster"]
    assert len(events["e_steps"]) == len(events["e_cells"]) > 0
    assert all(0 <= s < 1000 for s in events["e_steps"] + events["i_steps"])  # 100 ms at 0.1 ms
    assert all(0 <= c < 200 for c in events["e_cells"]) and all(0 <= c < 50 for c in events["i_cells"])
    # the picked image's E population rate (1 ms bins) counts exactly these spikes
    assert sum(r["population_rate_e_hz"]) * 1e-3 * 200 == pytest.approx(len(events["e_steps"]))


def test_the_same_knobs_give_the_same_answer(trained):
    http, run = trained
    a, b = (post(http, run.id, w_ie_scale=2.5, n_images=4, raster=True).json() for _ in range(2))
    a.pop("timings_s"), b.pop("timings_s")
    assert a == b


def test_couplings_move_the_network_the_way_physics_says(trained):
    http, run = trained
    base = post(http, run.id, n_images=8).json()
    no_ei = post(http, run.id, n_images=8, w_ei_scale=0.0, raster=True).json()
    assert no_ei["rate_i_hz"] == 0.0 and no_ei["raster"]["i_steps"] == []  # nothing drives I
    no_ie = post(http, run.id, n_images=8, w_ie_scale=0.0).json()
    assert no_ie["rate_e_hz"] > 2 * base["rate_e_hz"]  # E freed from inhibition
    # no I->E and no E->I reach E the same way: both leave E open-loop
    assert no_ie["rate_e_hz"] == pytest.approx(no_ei["rate_e_hz"])
    silent = post(http, run.id, n_images=8, max_rate_hz=0.0).json()
    assert silent["rate_e_hz"] == silent["rate_i_hz"] == 0.0 and silent["gamma_peak_hz"] is None


def test_openapi_describes_the_endpoint(trained):
    http, _ = trained
    spec = http.get("/openapi.json").json()
    operation = spec["paths"]["/api/runs/{run_id}/whatif"]["post"]
    assert {"200", "404", "409", "422", "503"} <= set(operation["responses"])
    request = spec["components"]["schemas"]["WhatIfRequest"]
    assert request["additionalProperties"] is False
    assert {"w_ei_scale", "w_ie_scale", "w_in_scale", "max_rate_hz", "tau_gaba_ms", "sample", "n_images",
            "raster"} == set(request["properties"])


@pytest.mark.parametrize("body,loc", [
    ({"w_ei_scale": -1.0}, ["body", "w_ei_scale"]),
    ({"w_ie_scale": 101}, ["body", "w_ie_scale"]),
    ({"w_in_scale": "2"}, ["body", "w_in_scale"]),        # strict: no strings for numbers
    ({"tau_gaba_ms": 0.0}, ["body", "tau_gaba_ms"]),
    ({"max_rate_hz": 5000.0}, ["body", "max_rate_hz"]),
    ({"n_images": 0}, ["body", "n_images"]),
    ({"n_images": 2.5}, ["body", "n_images"]),
    ({"sample": 99_999}, ["body", "sample"]),              # beyond the run's test set: the engine's check
    ({"raster": "yes"}, ["body", "raster"]),
    ({"w_ei": 0.5}, ["body", "w_ei"]),                    # unknown field
])
def test_bad_input_is_422_naming_the_field(trained, body, loc):
    http, run = trained
    response = post(http, run.id, **body)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc


def test_unknown_runs_and_runs_without_weights_are_refused(trained):
    http, _ = trained
    missing = post(http, "nope")
    assert missing.status_code == 404 and "nope" in missing.json()["detail"]
    queued = http.post("/api/runs", json={"config": small_config()}).json()
    http.post(f"/api/runs/{queued['id']}/cancel")
    refused = post(http, queued["id"])
    assert refused.status_code == 409 and "no weights" in refused.json()["detail"]
    assert http.post("/api/runs/nope/whatif", content=b"{not json",
                     headers={"content-type": "application/json"}).status_code == 422
    assert http.post("/api/runs/nope/whatif", content=b"{}").status_code == 415  # a JSON body says so


def test_a_fine_tune_is_launched_from_a_finished_run_only(trained):
    """Save as run's request: a missing source is a 422 naming init_run, an unfinished one a 409."""
    http, run = trained
    base = {**small_config(**PING_200)}
    missing = http.post("/api/runs", json={"config": {**base, "init_run": "nosuchrun"}})
    assert missing.status_code == 422 and missing.json()["detail"][0]["loc"] == ["body", "config", "init_run"]
    queued = http.post("/api/runs", json={"config": base}).json()
    unfinished = http.post("/api/runs", json={"config": {**base, "init_run": queued["id"]}})
    assert unfinished.status_code == 409 and queued["id"] in unfinished.json()["detail"]
    http.post(f"/api/runs/{queued['id']}/cancel")
    fine_tune = http.post("/api/runs", json={"config": {**base, "init_run": run.id, "init_w_ie_scale": 0.5}})
    assert fine_tune.status_code == 201, fine_tune.text
    assert fine_tune.json()["config"]["init_run"] == run.id and fine_tune.json()["config"]["init_w_ie_scale"] == 0.5
    http.post(f"/api/runs/{fine_tune.json()['id']}/cancel")


def test_the_euler_check_says_where_forward_euler_stops_being_stable(trained):
    """POST .../whatif/euler-check: the coupling sweep's forward-Euler check at a slider position."""
    http, run = trained
    trained_point = http.post(f"/api/runs/{run.id}/whatif/euler-check", json={"sample": 2})
    assert trained_point.status_code == 200, trained_point.text
    body = trained_point.json()
    assert body["applies"] and not body["unstable"] and 0 < body["step_factor_max"] < body["unstable_from"] == 2.0
    strong = http.post(f"/api/runs/{run.id}/whatif/euler-check",
                       json={"w_ei_scale": 100.0, "w_ie_scale": 100.0, "sample": 2}).json()
    assert strong["unstable"] and strong["step_factor_max"] >= 2.0 and strong["unstable_share"] > 0
    bad = http.post(f"/api/runs/{run.id}/whatif/euler-check", json={"n_images": 4})  # not a field of the check
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "n_images"]
    assert http.post("/api/runs/nope/whatif/euler-check", json={}).status_code == 404
    beyond = http.post(f"/api/runs/{run.id}/whatif/euler-check", json={"sample": 99_999})
    assert beyond.status_code == 422 and beyond.json()["detail"][0]["loc"] == ["body", "sample"]
    assert "/api/runs/{run_id}/whatif/euler-check" in http.get("/openapi.json").json()["paths"]
