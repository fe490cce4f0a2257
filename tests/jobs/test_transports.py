"""One contract suite for the worker's two transports (jobs.transport): the same
worker (`python -m jobs.worker`, a real subprocess training a tiny run) once
writing the store directly and once reporting over a real server's API with the
run's credential, from another working directory and a scratch folder of its
own. The server runs queue-only (workers 0): the test claims runs and issues
credentials as the scheduler would at dispatch."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

import engine
from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.store import RunStore

from tests.app.conftest import REPO, start_server
from tests.conftest import small_config

ADMIN = "admin-token-for-tests"
TRANSPORTS = ("store", "http")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("server") / "data", workers=0, token=ADMIN)
    yield server
    server.stop()


@pytest.fixture
def store(server):
    store = RunStore(DataDir.at(server.data_dir).db_path)
    yield store
    store.close()


class Worker:
    """A worker subprocess for a claimed run, through one transport."""

    def __init__(self, transport: str, server, store: RunStore, run_id: str, cwd: Path):
        run = store.get_run(run_id)
        env = {**os.environ, "PYTHONPATH": str(REPO), "SPIKEBOARD_THREADS": "1"}
        if transport == "http":
            self.credential = store.issue_credential(run.id, run.attempt)  # what the executor does at dispatch
            target = ["--server", server.url]
            env["SPIKEBOARD_RUN_CREDENTIAL"] = self.credential
        else:
            target = [str(server.data_dir)]
        cwd.mkdir(parents=True, exist_ok=True)
        self.process = subprocess.Popen([sys.executable, "-m", "jobs.worker", *target, run.id, str(run.attempt)],
                                        cwd=cwd, env=env, start_new_session=True)

    def wait(self, timeout_s: float = 180) -> int:
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def launch(server, store, tmp_path):
    started: list[Worker] = []

    def launch(transport: str, run_id: str) -> Worker:
        worker = Worker(transport, server, store, run_id, tmp_path / f"node-{len(started)}")
        started.append(worker)
        return worker

    yield launch
    for worker in started:  # a failed test leaves no worker behind
        if worker.process.poll() is None:
            worker.process.kill()
            worker.process.wait()


def _claimed(store: RunStore, **overrides):
    run = store.create_run(RunKind.TRAIN, engine.Config.from_dict(small_config(**overrides)).to_dict())
    claimed = store.claim_next()
    assert claimed.id == run.id
    return claimed


def _wait_for(predicate, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_run_trains_to_success_with_its_epochs_and_files_on_the_server(transport, server, store, launch):
    run = _claimed(store)
    assert launch(transport, run.id).wait() == 0
    done = store.get_run(run.id)
    assert done.state is RunState.SUCCEEDED, done.error
    assert [r["epoch"] for r in store.metrics(run.id)] == [1, 2]
    folder = DataDir.at(server.data_dir).run_dir(run.id)
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoints/last.pt",
                 "artifacts/weights_init.npz", "artifacts/weights_final.npz"):
        assert (folder / name).is_file(), name
    # the server serves what a remote worker sent like what a local one wrote
    listed = httpx.get(f"{server.url}/api/runs/{run.id}/artifacts").json()["data"]
    assert {"checkpoints/last.pt", "artifacts/weights_final.npz"} <= {f["name"] for f in listed}


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_the_cancel_flag_ends_the_run_cancelled(transport, store, launch):
    run = _claimed(store, epochs=50)
    worker = launch(transport, run.id)
    _wait_for(lambda: store.get_run(run.id).n_epochs >= 1)
    store.request_cancel(run.id)  # what the API's cancel does; the worker learns it from its heartbeat
    assert worker.wait(30) == 0
    assert store.get_run(run.id).state is RunState.CANCELLED


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_killed_worker_resumes_from_the_checkpoint_the_server_holds(transport, server, store, launch):
    run = _claimed(store, epochs=3)
    first = launch(transport, run.id)
    _wait_for(lambda: store.get_run(run.id).n_epochs >= 1)
    os.kill(first.process.pid, signal.SIGKILL)  # nothing reported: the scheduler's requeue stands in
    first.wait()
    assert store.requeue(run.id, run.attempt)
    again = store.claim_next()
    assert again.attempt == 2
    second = launch(transport, run.id)
    assert second.wait() == 0
    done = store.get_run(run.id)
    assert done.state is RunState.SUCCEEDED, done.error
    assert done.resumed_from_epoch >= 1
    assert [r["epoch"] for r in store.metrics(run.id)] == [1, 2, 3]
    if transport == "http":  # the first attempt's credential no longer writes anything
        answer = httpx.post(f"{server.url}/api/worker/runs/{run.id}/heartbeat", json={},
                            headers={"Authorization": f"Bearer {first.credential}"})
        assert answer.status_code == 401


@pytest.mark.slow
@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_worker_that_lost_its_lease_stops_and_records_nothing(transport, store, launch):
    run = _claimed(store, epochs=50)
    worker = launch(transport, run.id)
    _wait_for(lambda: store.get_run(run.id).n_epochs >= 1)
    store.requeue(run.id, run.attempt)  # e.g. its heartbeat lapsed: the run belongs to the queue now
    assert worker.wait(30) == 0
    after = store.get_run(run.id)
    assert after.state is RunState.QUEUED and after.attempt == 1
    store.request_cancel(run.id)  # out of the queue: the next test claims its own run


# --- the per-run credential ------------------------------------------------------------------------

def _post(server, path: str, token: str | None, **kwargs) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.post(server.url + path, headers=headers, **kwargs)


def test_a_credential_writes_its_own_run_only_and_the_admin_token_none(server, store):
    a, b = _claimed(store, epochs=50), _claimed(store, epochs=50)
    token_a, token_b = store.issue_credential(a.id, a.attempt), store.issue_credential(b.id, b.attempt)
    assert token_a != token_b and ADMIN not in (token_a, token_b)
    record = {"epoch": 1, "test_acc": 10.0}
    for path, body in (("/heartbeat", {}), ("/epochs", {"epoch": 1, "record": record}),
                       ("/outcome", {"state": "succeeded"})):
        for token in (token_a, ADMIN, None, "x" * 43):
            answer = _post(server, f"/api/worker/runs/{b.id}{path}", token, json=body)
            assert answer.status_code == 401, (path, token, answer.text)
            assert "credential" in answer.json()["detail"]
    put = httpx.put(f"{server.url}/api/worker/runs/{b.id}/files/checkpoints/last.pt", content=b"forged",
                    headers={"Authorization": f"Bearer {token_a}", "Content-Type": "application/octet-stream"})
    assert put.status_code == 401
    assert store.metrics(b.id) == [] and store.get_run(b.id).state is RunState.RUNNING
    assert not (DataDir.at(server.data_dir).run_dir(b.id) / "checkpoints" / "last.pt").exists()
    # its own run: accepted
    assert _post(server, f"/api/worker/runs/{b.id}/epochs", token_b, json={"epoch": 1, "record": record}).json() \
        == {"epoch": 1, "new": True}
    for run in (a, b):
        store.request_cancel(run.id)
        store.transition(run.id, RunState.CANCELLED)


def test_bad_reports_are_refused_naming_the_field(server, store):
    run = _claimed(store, epochs=50)
    token = store.issue_credential(run.id, run.attempt)
    base = f"/api/worker/runs/{run.id}"
    cases = [("/heartbeat", {"progress": 2}, "progress"),
             ("/epochs", {"epoch": 2, "record": {"epoch": 3}}, "epoch"),
             ("/epochs", {"epoch": 0, "record": {"epoch": 0}}, "epoch"),
             ("/outcome", {"state": "running"}, "state"),
             ("/resumed", {"epoch": "one"}, "epoch")]
    for path, body, field in cases:
        answer = _post(server, base + path, token, json=body)
        assert answer.status_code == 422, (path, answer.text)
        assert field in str(answer.json()["detail"][0]["loc"]), answer.text
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/octet-stream"}
    for name in ("..%2F..%2Fspikeboard.db", "a/../../x", "checkpoints/last.pt.tmp", "%2Fetc%2Fpasswd"):
        answer = httpx.put(f"{server.url}{base}/files/{name}", content=b"x", headers=headers)
        assert answer.status_code in (404, 422), (name, answer.text)
        if answer.status_code == 422:
            assert answer.json()["detail"][0]["loc"] == ["path", "name"]
    # a file is stored as sent, even one that parses as JSON with NaN (an analysis's result.json)
    stored = httpx.put(f"{server.url}{base}/files/result.json", content=b'{"x": NaN}', headers=headers)
    assert stored.status_code == 200 and stored.json() == {"name": "result.json", "size_bytes": 10}
    assert (DataDir.at(server.data_dir).run_dir(run.id) / "result.json").read_bytes() == b'{"x": NaN}'
    for name in ("result.json/x", "checkpoints"):  # under a file; onto a folder
        httpx.put(f"{server.url}{base}/files/checkpoints/last.pt", content=b"x", headers=headers)
        answer = httpx.put(f"{server.url}{base}/files/{name}", content=b"x", headers=headers)
        assert answer.status_code == 422 and answer.json()["detail"][0]["loc"] == ["path", "name"], answer.text
    # a cancel that was never asked for is not the worker's to record
    assert _post(server, base + "/outcome", token, json={"state": "cancelled"}).status_code == 409
    store.request_cancel(run.id)
    assert _post(server, base + "/outcome", token, json={"state": "cancelled"}).json()["state"] == "cancelled"
    # finished: the credential writes nothing more
    assert _post(server, base + "/epochs", token, json={"epoch": 1, "record": {"epoch": 1}}).status_code == 409


def test_the_worker_routes_are_in_the_openapi(server):
    paths = httpx.get(server.url + "/openapi.json").json()["paths"]
    base = "/api/worker/runs/{run_id}"
    assert {base, base + "/heartbeat", base + "/epochs", base + "/resumed", base + "/outcome",
            base + "/files/{name}"} <= set(paths)
    put = paths[base + "/files/{name}"]["put"]
    assert "application/octet-stream" in put["requestBody"]["content"]
    assert {"401", "409", "422"} <= set(paths[base + "/epochs"]["post"]["responses"])


def test_a_remote_fine_tune_starts_from_the_source_weights_the_server_holds(server, store, launch, tmp_path):
    # the store transport's fine-tune is tests/jobs/test_finetune.py; over HTTP the worker has
    # no data dir, so the source's final weights must come from the server
    import numpy as np

    source = _claimed(store, epochs=1)
    assert launch("store", source.id).wait() == 0
    assert store.get_run(source.id).state is RunState.SUCCEEDED
    run = _claimed(store, epochs=1, init_run=source.id, init_w_ie_scale=2.0)
    assert launch("http", run.id).wait() == 0
    done = store.get_run(run.id)
    assert done.state is RunState.SUCCEEDED, done.error
    folder = DataDir.at(server.data_dir)
    with np.load(folder.run_dir(source.id) / "artifacts" / "weights_final.npz") as trained, \
            np.load(folder.run_dir(run.id) / "artifacts" / "weights_init.npz") as start:
        np.testing.assert_array_equal(start["W_ie"], (trained["W_ie"].astype(np.float64) * 2.0).astype(np.float32))
        np.testing.assert_array_equal(start["W_in"], trained["W_in"])


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_an_analysis_puts_each_cell_on_the_server_and_a_next_attempt_resumes_after_them(
        transport, server, store, launch):
    """A remote analysis sent its result only when it finished: its coupling heatmap stayed
    empty while it ran, and a killed worker's next attempt began at the first cell again."""
    import json

    from tests.engine.test_coupling import untrained

    config = engine.Config.from_dict(small_config(n_e=60, n_i=15, t_ms=50.0, ei_strength=0.2))
    source = store.create_run(RunKind.TRAIN, config.to_dict())
    untrained(DataDir.at(server.data_dir).run_dir(source.id), config)
    params = {"factors": [0, 0.5, 1, 2], "samples": 8}  # 16 cells
    analysis = store.create_run(RunKind.ANALYSIS, {"name": "coupling_sweep", "params": params},
                                source_run_id=source.id)
    claimed = store.claim_next(kinds=[RunKind.ANALYSIS])
    assert claimed.id == analysis.id
    result = DataDir.at(server.data_dir).run_dir(analysis.id) / "result.json"

    def cells_on_server() -> list[dict]:
        try:
            return json.loads(result.read_text())["cells"]
        except (OSError, ValueError, KeyError):  # not there yet
            return []

    first = launch(transport, analysis.id)
    _wait_for(lambda: len(cells_on_server()) >= 2)  # while the worker still runs
    os.kill(first.process.pid, signal.SIGKILL)
    first.wait()
    partial = json.loads(result.read_text())
    assert not partial["complete"] and len(partial["cells"]) < 16
    held = len(partial["cells"])
    partial["cells"][0]["marker"] = "from the first attempt"  # a cell run again would not carry it
    result.write_text(json.dumps(partial))
    assert store.requeue(analysis.id, claimed.attempt)
    assert store.claim_next(kinds=[RunKind.ANALYSIS]).attempt == 2
    assert launch(transport, analysis.id).wait() == 0
    done = store.get_run(analysis.id)
    assert done.state is RunState.SUCCEEDED, done.error
    resumed = json.loads(result.read_text())  # equal to an uninterrupted sweep: tests/engine/test_coupling.py
    assert resumed["complete"] and resumed["cells"][0]["marker"] == "from the first attempt"
    assert len(resumed["cells"]) == 16 and "marker" not in resumed["cells"][held]
