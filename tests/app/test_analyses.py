"""An analysis job on a finished run, through the real server and registry."""

import json

import pytest

from app.client import ApiError
from jobs.models import RunKind, RunState

from tests.conftest import small_config

from engine.analyses import registry  # a missing or renamed analysis fails here, never skips


def _small_params():
    """The smallest valid coupling sweep, from the spec's own defaults."""
    spec = registry.ANALYSES["coupling_sweep"]
    params = spec.validate({})
    params["factors"] = params["factors"][:2]  # a 2 x 2 grid keeps the test short
    params["samples"] = 50
    return spec.validate(params)


def test_coupling_sweep_on_a_finished_run(server_factory):
    server = server_factory()
    with server.client() as api:
        source = api.submit_run(small_config(epochs=1))
        assert api.wait(source.id, timeout_s=120).state == RunState.SUCCEEDED
        analysis = api.submit_analysis(source.id, "coupling_sweep", _small_params())
        assert analysis.kind == RunKind.ANALYSIS and analysis.source_run_id == source.id
        done = api.wait(analysis.id, timeout_s=180)
        assert done.state == RunState.SUCCEEDED, done.error
        names = {a.name for a in api.artifacts(analysis.id)}
        assert "result.json" in names
        result = json.loads(api.download(analysis.id, "result.json"))
        assert result["complete"] and len(result["cells"]) == 4 and done.progress == 1.0
        with pytest.raises(ApiError) as bad:
            api.submit_analysis(source.id, "coupling_sweep", {"factors": [-1]})
        assert bad.value.status_code == 422 and bad.value.detail[0]["loc"] == ["body", "params", "factors"]
