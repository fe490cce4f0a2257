"""Choosing the executor when serving: settings, the `serve` flags, and a real
`spikeboard serve --executor ray` that runs a queued run to the end."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from app.cli import build_parser
from app.client import Client
from app.settings import Settings
from jobs.models import RunState

from tests.app.conftest import free_port
from tests.conftest import small_config

REPO = Path(__file__).resolve().parents[2]


def test_executor_settings_come_from_the_environment_and_flags():
    env = {"SPIKEBOARD_EXECUTOR": "ray", "SPIKEBOARD_RAY_ADDRESS": "auto", "SPIKEBOARD_RUNS_PER_GPU": "3"}
    settings = Settings.from_env(env)
    assert (settings.executor, settings.ray_address, settings.runs_per_gpu) == ("ray", "auto", 3)
    assert Settings.from_env(env, ray_address="head:6379").ray_address == "head:6379"
    assert Settings.from_env({}).executor == "local" and Settings.from_env({}).ray_address is None


@pytest.mark.parametrize("changes,named", [({"executor": "slurm"}, "executor"),
                                           ({"ray_address": "auto"}, "ray_address"),
                                           ({"runs_per_gpu": 0}, "runs_per_gpu")])
def test_bad_executor_settings_are_refused_by_name(changes, named):
    with pytest.raises(ValueError, match=named):
        Settings(**changes)


def test_remote_workers_report_to_the_public_url_or_the_bound_address():
    assert Settings.from_env({"SPIKEBOARD_PORT": "8123"}).worker_url == "http://127.0.0.1:8123"
    wildcard = Settings.from_env({"SPIKEBOARD_HOST": "0.0.0.0", "SPIKEBOARD_PORT": "8000"})
    assert wildcard.worker_url == "http://127.0.0.1:8000"  # this machine only: --public-url for others
    public = Settings.from_env({"SPIKEBOARD_PUBLIC_URL": "http://10.0.0.1:8000/"})
    assert public.worker_url == "http://10.0.0.1:8000"
    assert build_parser().parse_args(["serve", "--public-url", "http://a:1"]).public_url == "http://a:1"
    with pytest.raises(ValueError, match="public_url"):
        Settings(public_url="10.0.0.1:8000")  # no scheme


def test_serve_parses_the_executor_flags():
    args = build_parser().parse_args(["serve", "--executor", "ray", "--ray-address", "auto",
                                      "--runs-per-gpu", "2"])
    assert (args.executor, args.ray_address, args.runs_per_gpu) == ("ray", "auto", 2)
    defaults = build_parser().parse_args(["serve"])
    assert (defaults.executor, defaults.ray_address, defaults.runs_per_gpu) == (None, None, None)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--executor", "slurm"])


def _wait_healthy(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if httpx.get(url + "/api/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert process.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
        time.sleep(0.2)


def test_spikeboard_serve_with_the_ray_executor_runs_a_run(tmp_path):
    pytest.importorskip("ray", reason="ray is not installed: pip install -e '.[ray]'")
    port, log = free_port(), tmp_path / "server.log"
    # no --ray-address: the server starts a Ray instance of its own on this machine
    args = [sys.executable, "-m", "app.cli", "serve", "--port", str(port), "--data-dir", str(tmp_path / "data"),
            "--executor", "ray", "--workers", "1"]
    with open(log, "wb") as out:
        process = subprocess.Popen(args, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                   env={**os.environ, "PYTHONPATH": str(REPO)})
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(url, process, log, 90)
        with Client(url, token="") as client:  # "": no token, whatever SPIKEBOARD_TOKEN says
            run = client.submit_run(small_config())
            done = client.wait(run.id, timeout_s=120)
            assert done.state == RunState.SUCCEEDED, (done, log.read_text()[-3000:])
            assert client.metrics(run.id)["epoch"].tolist() == [1, 2]
        assert "ray executor" in log.read_text()
    finally:
        process.send_signal(signal.SIGTERM)  # a graceful stop shuts its Ray instance down
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
