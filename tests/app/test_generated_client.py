"""A client generated from the served /openapi.json by openapi-python-client (a
maintained generator) creates a run, follows it, reads its metrics and a file.

What a generated client cannot express is fixed in the OpenAPI (app/api/*), never
in the generator's output: operation ids are the endpoint names (runs.submit_run,
not submit_run_api_runs_post), the events stream is declared as text and a run's
file as binary, so the generated functions return them.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
import subprocess
import sys

import httpx
import pytest

from tests.app.conftest import start_server

TOKEN = "generated-client-token"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("generated") / "data", workers=1, token=TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def generated(served, tmp_path_factory):
    """The package `spikeboard_api`, generated from the running server's schema."""
    root = tmp_path_factory.mktemp("generated-client")
    spec = root / "openapi.json"
    spec.write_bytes(httpx.get(f"{served.url}/openapi.json").content)
    config = root / "config.yml"
    config.write_text("post_hooks: []\n")  # no ruff formatting of the output: faster, same code
    done = subprocess.run([sys.executable, "-m", "openapi_python_client", "generate", "--path", str(spec),
                           "--output-path", str(root / "spikeboard_api"), "--meta", "none", "--config", str(config)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout + done.stderr, done.stdout + done.stderr  # every endpoint generated
    sys.path.insert(0, str(root))
    try:
        yield importlib.import_module("spikeboard_api")
    finally:
        sys.path.remove(str(root))
        for name in [m for m in sys.modules if m == "spikeboard_api" or m.startswith("spikeboard_api.")]:
            del sys.modules[name]


def test_generated_client_creates_follows_and_reads_a_run(served, generated):
    runs = importlib.import_module("spikeboard_api.api.runs")
    from spikeboard_api.api.runs import follow_run, get_artifact, get_metrics, get_run, list_runs, submit_run
    from spikeboard_api.models import MetricsPublic, RunConfig, RunCreate, RunPublic, RunState
    from spikeboard_api.models.run_config_arch import RunConfigArch
    from spikeboard_api.types import File

    functions = {m.name for m in pkgutil.iter_modules(runs.__path__)}  # named after the endpoints
    assert {"submit_run", "follow_run", "get_metrics", "cancel_run", "rerun", "delete_run"} <= functions
    client = generated.AuthenticatedClient(base_url=served.url, token=TOKEN, timeout=httpx.Timeout(180.0),
                                           raise_on_unexpected_status=True)
    config = RunConfig(arch=RunConfigArch.PING, n_e=40, n_i=10, t_ms=20.0, epochs=1, batch_size=200)
    run = submit_run.sync(client=client, body=RunCreate(config=config))
    assert isinstance(run, RunPublic) and run.state is RunState.QUEUED and run.config["n_e"] == 40

    stream = follow_run.sync(client=client, run_id=run.id)  # the SSE text, once the run has ended
    events = re.findall(r"^event: (\w+)\r?$", stream, re.M)  # sse-starlette ends lines with CRLF
    assert events[0] == "state" and events[-1] == "end" and events.count("epoch") == 1

    done = get_run.sync(client=client, run_id=run.id)
    assert done.state is RunState.SUCCEEDED and done.n_epochs == 1
    metrics = get_metrics.sync(client=client, run_id=run.id)
    assert isinstance(metrics, MetricsPublic) and metrics.count == 1
    assert metrics.data[0]["epoch"] == 1 and 0 <= metrics.data[0]["test_acc"] <= 100
    weights = get_artifact.sync(client=client, run_id=run.id, name="artifacts/weights_final.npz")
    stored = served.data_dir / "runs" / run.id / "artifacts" / "weights_final.npz"
    assert isinstance(weights, File) and weights.payload.read() == stored.read_bytes()
    listed = list_runs.sync(client=client, state=RunState.SUCCEEDED)
    assert [r.id for r in listed.data] == [run.id]

    anonymous = generated.Client(base_url=served.url)
    assert submit_run.sync_detailed(client=anonymous, body=RunCreate(config=config)).status_code == 401
