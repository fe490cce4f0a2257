"""`spikeboard.Client` end to end against real servers on 127.0.0.1: typed results,
follow/wait, metrics as a DataFrame, downloads, errors carrying the server's detail."""

from __future__ import annotations

import pandas as pd
import pytest

from app.api.schemas import RunPublic, StudyPublic, SweepPublic
from spikeboard import (ApiError, Client, Conflict, Event, InvalidRequest, NotFound, RunKind, RunState,
                        ServerUnreachable, Unauthorized)
from tests.app.conftest import free_port, start_server
from tests.conftest import small_config

TOKEN = "client-test-token"


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("client") / "data", workers=1, token=TOKEN)
    yield server
    server.stop()


def test_train_follow_wait_metrics_download_rerun_cancel_delete(token_server, tmp_path, capsys):
    with Client(token_server.url, token=TOKEN) as client:
        run = client.submit_run(small_config(epochs=1), seed=7)
        # a free slot may claim it before the answer is written (seen under load)
        assert isinstance(run, RunPublic) and run.state in (RunState.QUEUED, RunState.RUNNING)
        assert run.config["seed"] == 7

        events = list(client.follow(run, timeout_s=120))
        assert all(isinstance(e, Event) for e in events) and events[-1].name == "end"
        assert [e.data["epoch"] for e in events if e.name == "epoch"] == [1]
        assert [e.data["state"] for e in events if e.name == "state"][-1] == "succeeded"

        done = client.wait(run.id, timeout_s=30, progress=True)
        assert done.state is RunState.SUCCEEDED and done.n_epochs == 1 and done.progress == 1.0
        assert "100%" in capsys.readouterr().err  # the tqdm bar

        metrics = client.metrics(done)
        assert isinstance(metrics, pd.DataFrame) and metrics["epoch"].tolist() == [1]
        assert {"test_acc", "rate_e_hz", "w_norm.W_in", "grad_ratio.W_out"} <= set(metrics.columns)

        names = {a.name for a in client.artifacts(run)}
        assert {"config.json", "metrics.jsonl", "artifacts/weights_final.npz"} <= names
        stored = token_server.data_dir / "runs" / run.id / "artifacts" / "weights_final.npz"
        assert client.download(run, "artifacts/weights_final.npz") == stored.read_bytes()
        written = client.download(run, "artifacts/weights_final.npz", tmp_path)
        assert written == tmp_path / "weights_final.npz" and written.read_bytes() == stored.read_bytes()
        with pytest.raises(NotFound):
            client.download(run, "artifacts/nothing.npz", tmp_path)

        with pytest.raises(Conflict, match="cannot become cancelled") as finished:
            client.cancel(run)
        assert finished.value.status_code == 409

        analysis = client.submit_analysis(run, "fi_curve")
        assert analysis.kind is RunKind.ANALYSIS and analysis.source_run_id == run.id
        again = client.rerun(run)
        assert again.id != run.id and again.config == run.config
        for queued in (analysis, again):
            client.cancel(queued)
        assert {client.wait(r, timeout_s=30, poll_s=0.2).state for r in (analysis, again)} == {RunState.CANCELLED}
        assert client.list_runs(state="cancelled").count == 2
        assert [r.id for r in client.list_runs(kind=RunKind.TRAIN, state=RunState.SUCCEEDED).data] == [run.id]

        client.delete(run)
        with pytest.raises(NotFound, match=f"run {run.id} not found"):
            client.get_run(run)


def test_errors_carry_the_servers_detail_and_the_token_comes_from_the_environment(token_server, monkeypatch):
    monkeypatch.delenv("SPIKEBOARD_TOKEN", raising=False)
    with Client(token_server.url) as anonymous:
        assert anonymous.health().status == "ok"  # reads need no token
        with pytest.raises(Unauthorized) as denied:
            anonymous.submit_run(small_config())
        assert denied.value.status_code == 401 and denied.value.detail == "missing or wrong bearer token"
    with Client(token_server.url, token="wrong-token") as wrong, pytest.raises(Unauthorized):
        wrong.submit_run(small_config())

    monkeypatch.setenv("SPIKEBOARD_TOKEN", TOKEN)
    monkeypatch.setenv("SPIKEBOARD_URL", token_server.url)
    with Client() as client:
        with pytest.raises(InvalidRequest) as negative:
            client.submit_run(n_e=-1)
        assert negative.value.fields == ["config.n_e"] and "config.n_e: must be > 0" in str(negative.value)
        with pytest.raises(InvalidRequest) as unknown:
            client.submit_run(n_cells=5)
        assert unknown.value.fields == ["config.n_cells"]
        with pytest.raises(InvalidRequest) as grid:
            client.submit_sweep(small_config(), {"seed": []})
        assert grid.value.fields == ["grid.seed"]
        with pytest.raises(NotFound, match="no study preset"):
            client.submit_study("nb999")
        assert isinstance(negative.value, ApiError) and isinstance(negative.value, Exception)

    with Client(f"http://127.0.0.1:{free_port()}") as nobody, pytest.raises(ServerUnreachable):
        nobody.list_runs()


def test_sweeps_studies_force_and_filters_on_a_queue_only_server(queue_only_server, tmp_path):
    with Client(queue_only_server.url) as client:
        sweep = client.submit_sweep(small_config(epochs=1), {"ei_strength": [0.0, 0.1]})
        assert isinstance(sweep, SweepPublic) and len(sweep.run_ids) == 2
        children = client.list_runs(sweep_id=sweep.id)
        assert children.count == 2 and sorted(r.config["ei_strength"] for r in children.data) == [0.0, 0.1]
        client.cancel_sweep(sweep)
        assert client.wait_sweep(sweep, timeout_s=10, progress=True).counts["cancelled"] == 2

        force = client.submit_force("train", {"config": {"n": 50}})
        assert force.kind is RunKind.FORCE and force.config["experiment"] == "train"
        assert force.id in [r.id for r in client.list_runs(kind="force").data]
        experiments = {e.name for e in client.force_experiments().data}
        assert "train" in experiments

        study = client.submit_study("nb041", {"tier": "smoke", "epochs": 1, "tau_gaba_ms": [6.0, 9.0], "seed": [42]})
        assert isinstance(study, StudyPublic) and len(study.members) == 2
        assert client.get_study(study).id in [s.id for s in client.list_studies().data]
        assert client.cancel_study(study).state is RunState.CANCELLED
        report = client.study_report(study)
        assert report["study_id"] == study.id and report["state"] == "cancelled"
        markdown = client.download_report(study, "md", tmp_path)
        assert markdown == tmp_path / f"study-{study.id}.md" and markdown.read_text().startswith("#")
        assert client.download_report(study, "csv").splitlines()[0]  # a header row
        assert "nb041" in {p.name for p in client.study_presets().data}
        with pytest.raises(Conflict, match="needs a succeeded train run"):
            client.submit_analysis(force, "fi_curve")


def test_the_client_starts_without_torch():
    """A script on a laptop imports the client for REST calls only, and `spikeboard runs`
    builds the whole command line: neither imports torch (2-6 s)."""
    import subprocess
    import sys

    from engine.force.experiments import EXPERIMENTS
    from engine.force.names import EXPERIMENT_NAMES

    assert sorted(EXPERIMENT_NAMES) == sorted(EXPERIMENTS)  # the API's names are the registry's
    code = ("import sys, app.client, app.cli_remote; from app.cli import build_parser; build_parser(); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr
