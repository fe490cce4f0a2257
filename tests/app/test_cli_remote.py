"""The CLI against a real server: `--server` on train/study/force and `spikeboard runs`.

A queue-only server (no worker slots) with a token: every command goes through
the API; no training needed. Following a live run is in test_readme_scripting.
"""

from __future__ import annotations

import json

import pytest

from app.cli import main
from spikeboard import Client
from tests.app.conftest import start_server

TOKEN = "cli-test-token"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("cli-remote") / "data", workers=0, token=TOKEN)
    yield server
    server.stop()


@pytest.fixture
def client(server):
    with Client(server.url, token=TOKEN) as client:
        yield client


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        status = main(list(argv))
    except SystemExit as exit_:  # argparse's usage errors (an unknown choice) exit 2
        status = exit_.code
    out, err = capsys.readouterr()
    return status, out, err


def test_train_study_force_queue_through_the_api(server, client, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("SPIKEBOARD_TOKEN", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may appear in a local data dir
    status, out, _ = run_cli(capsys, "train", "--server", server.url, "--token", TOKEN, "--detach",
                             "--arch", "coba", "--epochs", "1", "--set", "n_e=40", "--set", "t_ms=20")
    queued = json.loads(out)
    assert status == 0 and queued["state"] == "queued"
    run = client.get_run(queued["run_id"])
    assert (run.config["arch"], run.config["epochs"], run.config["n_e"], run.config["t_ms"]) == ("coba", 1, 40, 20.0)
    assert run.config["device"] == "cpu" and run.config["ei_strength"] == 0.0  # the server's defaults

    monkeypatch.setenv("SPIKEBOARD_TOKEN", TOKEN)  # the token from the environment
    status, out, _ = run_cli(capsys, "force", "train", "--server", server.url, "--set", "n=50")
    force = client.get_run(json.loads(out)["run_id"])
    assert status == 0 and force.kind.value == "force"
    status, out, _ = run_cli(capsys, "study", "nb041", "--server", server.url, "--tier", "smoke", "--epochs", "1",
                             "--set", "tau_gaba_ms=[6.0, 9.0]", "--set", "seed=[42]")
    study = client.get_study(json.loads(out)["study_id"])
    assert status == 0 and len(study.members) == 2 and study.plan["base"]["tier"] == "smoke"
    status, out, _ = run_cli(capsys, "study", "--server", server.url)
    assert status == 0 and out.startswith("nb024")
    assert not (tmp_path / "spikeboard-data").exists()


def test_bad_requests_exit_2_with_the_servers_detail(server, capsys, monkeypatch):
    monkeypatch.delenv("SPIKEBOARD_TOKEN", raising=False)
    status, _, err = run_cli(capsys, "train", "--server", server.url, "--detach")
    assert status == 2 and "HTTP 401" in err and "missing or wrong bearer token" in err
    status, _, err = run_cli(capsys, "train", "--server", server.url, "--token", TOKEN, "--set", "n_e=-1")
    assert status == 2 and "invalid request" in err and "config.n_e: must be > 0" in err
    status, _, err = run_cli(capsys, "force", "nope", "--server", server.url, "--token", TOKEN)
    assert status == 2 and "invalid choice: 'nope'" in err
    status, _, err = run_cli(capsys, "train", "--server", server.url, "--out", "runs/here")
    assert status == 2 and "local run folder" in err
    status, _, err = run_cli(capsys, "runs", "show", "nope", "--server", server.url)
    assert status == 2 and "run nope not found" in err
    with pytest.raises(SystemExit) as usage:  # no --server: a local run needs its folder, as before
        main(["train", "--epochs", "1"])
    assert usage.value.code == 2 and "--out is required" in capsys.readouterr().err


def test_runs_list_show_cancel_follow(server, client, capsys, monkeypatch):
    monkeypatch.setenv("SPIKEBOARD_URL", server.url)  # `runs` takes the server from the environment
    monkeypatch.setenv("SPIKEBOARD_TOKEN", TOKEN)
    first = client.submit_run(epochs=1, seed=1)
    second = client.submit_run(epochs=1, seed=2)

    status, out, err = run_cli(capsys, "runs", "list", "--state", "queued")
    lines = out.splitlines()
    assert status == 0 and lines[0].split()[:3] == ["ID", "KIND", "STATE"]
    assert {second.id, first.id} <= {line.split()[0] for line in lines[1:]}
    status, out, _ = run_cli(capsys, "runs", "list", "-q", "--limit", "1")
    assert out.split() == [second.id]  # newest first
    status, out, _ = run_cli(capsys, "runs", "list", "--json", "--kind", "train")
    assert json.loads(out)["count"] >= 2

    status, out, _ = run_cli(capsys, "runs", "show", first.id)
    shown = json.loads(out)
    assert status == 0 and shown["id"] == first.id and shown["config"]["seed"] == 1 and shown["last_epoch"] is None

    third = client.submit_run(epochs=1, seed=3)
    status, out, _ = run_cli(capsys, "runs", "front", third.id, second.id)  # third starts first, then second
    assert status == 0 and [line.split()[0] for line in out.splitlines()] == [third.id, second.id]
    assert client.get_run(third.id).priority > client.get_run(second.id).priority > client.get_run(first.id).priority
    client.cancel(third)

    status, out, _ = run_cli(capsys, "runs", "cancel", first.id, second.id)
    assert status == 0 and out.splitlines() == [f"{first.id} cancelled", f"{second.id} cancelled"]
    status, _, err = run_cli(capsys, "runs", "cancel", first.id)
    assert status == 2 and "HTTP 409" in err and "cannot become cancelled" in err
    status, _, err = run_cli(capsys, "runs", "front", first.id)
    assert status == 2 and "HTTP 409" in err and "only a queued run can move to the front" in err

    status, out, _ = run_cli(capsys, "runs", "follow", first.id)  # a finished run: its state, then the end
    assert status == 1 and out.split()[-2:] == [first.id, "cancelled"]


def test_queue_pause_show_resume(server, client, capsys, monkeypatch):
    """`spikeboard queue`: paused, runs queued meanwhile wait (and `train` says why), resumed."""
    monkeypatch.setenv("SPIKEBOARD_TOKEN", TOKEN)
    status, out, _ = run_cli(capsys, "queue", "pause", "--server", server.url)
    assert status == 0 and out.startswith("paused since ")
    try:
        status, out, err = run_cli(capsys, "train", "--server", server.url, "--detach", "--epochs", "1")
        assert status == 0 and "queue is paused" in err and "spikeboard queue resume" in err
        status, out, _ = run_cli(capsys, "queue", "show", "--server", server.url)
        assert status == 0 and out.startswith("paused since ") and client.health().paused
    finally:
        status, out, _ = run_cli(capsys, "queue", "resume", "--server", server.url)
    assert status == 0 and out.startswith("serving: ")
    assert client.queue().paused is False and client.queue().paused_at is None
    status, _, err = run_cli(capsys, "train", "--server", server.url, "--detach", "--epochs", "1")
    assert status == 0 and "paused" not in err
    monkeypatch.delenv("SPIKEBOARD_TOKEN")
    status, _, err = run_cli(capsys, "queue", "pause", "--server", server.url)  # no token: refused
    assert status == 2 and "token" in err.lower(), err
    assert client.queue().paused is False
