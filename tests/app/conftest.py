"""A real server (`python -m app.server`) on 127.0.0.1, a free port and a tmp data dir."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from app.client import Client

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free port for a test server, below the kernel's ephemeral range: a port the kernel
    handed out (bind to 0) was free only until the next process asked for one, and a Ray
    instance starting in the server before uvicorn bound took it (EADDRINUSE, a flaky
    failure). Above Ray's worker ports (10002-19999); nothing is given these ports unasked."""
    low, high = 20000, min(_ephemeral_low(), 32768)
    for port in random.sample(range(low, high), 200):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high - 1}")


def _ephemeral_low() -> int:
    try:  # Linux; elsewhere the range starts higher (49152 on macOS and Windows)
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 49152


@dataclass
class Server:
    url: str
    data_dir: Path
    process: subprocess.Popen
    token: str | None = None

    def client(self, token: str | None = "default") -> Client:
        """The typed client of this server; `token=None`: none sent (never SPIKEBOARD_TOKEN's)."""
        token = self.token if token == "default" else token
        return Client(self.url, token=token or "")

    def kill(self) -> None:
        """kill -9: no shutdown code runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.kill()


def start_server(data_dir: Path, *, workers: int = 1, token: str | None = None,
                 port: int | None = None, log_name: str = "server.log", dashboard: bool = False,
                 paused: bool = False) -> Server:
    """API-only unless `dashboard`: Panel's import would add seconds to every start."""
    port = port or free_port()
    args = [sys.executable, "-m", "app.server", "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(data_dir), "--workers", str(workers)] + (["--paused"] if paused else [])
    if token:
        args += ["--token", token]
    data_dir.mkdir(parents=True, exist_ok=True)
    log = open(data_dir / log_name, "ab")
    process = subprocess.Popen(args, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, "PYTHONPATH": str(REPO),
                                    "SPIKEBOARD_DASHBOARD": "1" if dashboard else "0"})
    server = Server(f"http://127.0.0.1:{port}", data_dir, process, token)
    deadline = time.monotonic() + 120  # Panel + torch imports take 30 s and more on a loaded 2-core box
    while True:
        try:
            if httpx.get(server.url + "/api/health", timeout=1).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.stop()
            raise RuntimeError(f"server did not start: {(data_dir / log_name).read_text()[-2000:]}")
        time.sleep(0.1)


@pytest.fixture
def server_factory(tmp_path):
    servers: list[Server] = []

    def make(data_dir: Path | None = None, **options) -> Server:
        server = start_server(data_dir or tmp_path / "data", **options)
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def queue_only_server(tmp_path_factory):
    """No worker slots: runs stay queued (API behaviour without training)."""
    server = start_server(tmp_path_factory.mktemp("queue-only") / "data", workers=0)
    yield server
    server.stop()
