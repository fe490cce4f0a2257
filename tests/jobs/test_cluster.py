"""Multi-node: a Ray head plus two worker nodes (separate raylets, own working
directory) and `spikeboard serve --executor ray` joined to them, with its data
under a relative path no worker node can resolve (tests/jobs/cluster.py).
Workers get their runs, send their epochs, checkpoints and outcomes, and
resume, over the API only. The tests share one cluster and run in file order;
the last one kills a node."""

from __future__ import annotations

import os
import shutil
import time

import pytest

from app.client import Client
from jobs.models import RunState

from tests.app.conftest import free_port
from tests.conftest import small_config
from tests.jobs.cluster import (ADMIN, ClusterServer, RayCluster, environ_of, short_tmp, worker_processes)

pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
pytestmark = pytest.mark.cluster  # in the default suite (issue 22: CI runs it): 80 s on an idle 2-core box, ~5.5 min loaded
EPOCHS = 4


@pytest.fixture(scope="module")
def cluster():
    root = short_tmp()
    cluster = None
    try:
        cluster = RayCluster(root)
        yield cluster
    finally:
        if cluster is not None:
            cluster.shutdown()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def server(cluster):
    server = ClusterServer(cluster.root / "server", cluster.address, free_port())
    try:
        server.start()
        yield server
    finally:
        server.stop()


@pytest.fixture
def api(server):
    with Client(server.url, token=ADMIN) as client:
        yield client


def _wait_for(predicate, timeout_s: float, what: str, server: ClusterServer):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{server.log()[-4000:]}"
        time.sleep(0.1)


def _epochs(api: Client, run_id: str) -> list[int]:
    return api.metrics(run_id)["epoch"].tolist()


def _n_epochs(api: Client, run_id: str) -> int:
    """Epochs stored so far (the metrics' rows)."""
    return len(api.metrics(run_id))


def _worker_of(cluster: RayCluster, server: ClusterServer, run_id: str) -> int:
    return _wait_for(lambda: next(iter(worker_processes(run_id)), None), 120, f"run {run_id}'s worker", server)


def test_a_run_trains_to_success_on_another_node(cluster, server, api):
    started = time.monotonic()
    run = api.submit_run(small_config(epochs=EPOCHS))
    pid = _worker_of(cluster, server, run.id)
    assert cluster.node_running(pid) is not None  # a worker node's process, not the server's
    env = environ_of(pid)
    assert env["SPIKEBOARD_RUN_CREDENTIAL"] and ADMIN not in env.values()  # its run's credential only
    assert os.readlink(f"/proc/{pid}/cwd") != str(server.root)
    _wait_for(lambda: _n_epochs(api, run.id), 180, "the first epoch", server)
    print(f"\nsubmit -> first epoch on the remote node: {time.monotonic() - started:.1f} s")
    done = api.wait(run.id, timeout_s=240)
    assert done.state == RunState.SUCCEEDED, (done, server.log()[-4000:])
    assert _epochs(api, run.id) == list(range(1, EPOCHS + 1)) and done.attempt == 1
    folder = server.data_dir / "runs" / run.id  # the server's disk holds the run folder
    assert (folder / "checkpoints" / "last.pt").is_file() and (folder / "artifacts" / "weights_final.npz").is_file()
    assert not (cluster.nodes_dir / "data").exists()


def test_cancel_stops_the_remote_worker(cluster, server, api):
    run = api.submit_run(small_config(epochs=50))
    pid = _worker_of(cluster, server, run.id)
    _wait_for(lambda: _n_epochs(api, run.id), 180, "the first epoch", server)
    asked = time.monotonic()
    api.cancel(run.id)
    done = api.wait(run.id, timeout_s=60)
    assert done.state == RunState.CANCELLED, done
    _wait_for(lambda: not worker_processes(run.id), 30, "the worker to exit", server)
    print(f"\ncancel -> worker gone: {time.monotonic() - asked:.1f} s (pid {pid})")


def test_a_server_restart_resumes_the_remote_run_from_its_checkpoint(cluster, server, api):
    run = api.submit_run(small_config(epochs=EPOCHS))
    _wait_for(lambda: _n_epochs(api, run.id), 180, "the first epoch", server)
    server.kill()  # kill -9: the Ray driver dies with it, and its tasks
    server.start()
    with Client(server.url, token=ADMIN) as again:
        done = again.wait(run.id, timeout_s=300)
        assert done.state == RunState.SUCCEEDED, (done, server.log()[-4000:])
        assert _epochs(again, run.id) == list(range(1, EPOCHS + 1))  # none lost, none twice
        assert done.attempt >= 2 and done.resumed_from_epoch >= 1


def test_kill_9_of_the_worker_node_resumes_on_another_node_from_the_last_checkpoint(cluster, server, api):
    run = api.submit_run(small_config(epochs=EPOCHS))
    pid = _worker_of(cluster, server, run.id)
    node = cluster.node_running(pid)
    _wait_for(lambda: _n_epochs(api, run.id) >= 2, 240, "two epochs", server)
    held = _n_epochs(api, run.id)
    cluster.kill_node(node)
    killed = time.monotonic()
    resumed_pid = _worker_of(cluster, server, run.id)
    assert cluster.node_running(resumed_pid) is not node
    done = api.wait(run.id, timeout_s=300)
    assert done.state == RunState.SUCCEEDED, (done, server.log()[-4000:])
    assert _epochs(api, run.id) == list(range(1, EPOCHS + 1))  # none lost, none twice
    assert done.attempt == 2 and done.resumed_from_epoch >= held
    print(f"\nnode killed with {held} epochs held; resumed from epoch {done.resumed_from_epoch} "
          f"({held - done.resumed_from_epoch} epochs lost); "
          f"kill -> worker on the other node {time.monotonic() - killed:.1f} s")
