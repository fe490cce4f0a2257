"""GET /api/backup and `spikeboard backup --server`: a server's whole data directory
downloaded as the archive `spikeboard backup` writes, restored and served elsewhere."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from jobs.backup import restore
from jobs.models import RunState
from jobs.paths import DataDir
from jobs.store import RunStore

from tests.app.conftest import REPO
from tests.conftest import small_config

TOKEN = "backup-test-token"


def test_a_server_is_backed_up_over_http_and_restores_whole(server_factory, tmp_path, monkeypatch, request):
    server_tmp = tmp_path / "server-tmp"  # the server writes the archive here before sending it
    server_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(server_tmp))
    # a server killed while sending left its folder; another server on this TMPDIR is sending
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left_by_dead = server_tmp / f"spikeboard-backup-{dead.pid}-x1"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    request.addfinalizer(lambda: (live.kill(), live.wait()))  # stopped even if an assertion fails first
    sending = server_tmp / f"spikeboard-backup-{live.pid}-x2"
    for folder in (left_by_dead, sending):
        folder.mkdir()
        (folder / "spikeboard-backup.tar.gz").write_bytes(b"partial archive")
    server = server_factory(token=TOKEN)
    with server.client() as api:
        run = api.submit_run(small_config(epochs=2))
        assert api.wait(run, timeout_s=300).state == RunState.SUCCEEDED
        # everything the server holds: the token is asked for, as for any write
        assert httpx.get(f"{server.url}/api/backup").status_code == 401
        with pytest.raises(ValueError, match="is a directory"):
            api.backup(tmp_path)
        archive = api.backup(tmp_path / "over-http.tar.gz")
    assert not list(tmp_path.glob("*.partial"))
    deadline = time.monotonic() + 10  # the server's copy is removed once sent (just after the response)
    while len(list(server_tmp.glob("spikeboard-backup-*"))) > 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(server_tmp.glob("spikeboard-backup-*")) == [sending]  # the dead server's removed, not the live one's

    restored = DataDir.at(tmp_path / "restored")
    summary = restore(archive, restored)
    assert summary.runs == 1 and summary.requeued == ()
    store = RunStore(restored.db_path)
    try:
        copy = store.get_run(run.id)
        assert copy.state is RunState.SUCCEEDED and copy.n_epochs == 2
        assert (restored.run_dir(run.id) / "checkpoints" / "last.pt").is_file()
    finally:
        store.close()

    # the CLI: the same download, said in a line; a wrong token is said, not a traceback
    cli = [sys.executable, "-m", "app.cli", "backup", "--server", server.url, "--to"]
    done = subprocess.run([*cli, str(tmp_path / "cli.tar.gz"), "--token", TOKEN], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"to {tmp_path / 'cli.tar.gz'}" in done.stdout and "spikeboard restore" in done.stdout
    refused = subprocess.run([*cli, str(tmp_path / "no.tar.gz"), "--token", "wrong"], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "HTTP 401" in refused.stderr and "Traceback" not in refused.stderr
    assert not (tmp_path / "no.tar.gz").exists() and not (tmp_path / "no.tar.gz.partial").exists()


def test_a_download_cut_off_midway_keeps_the_previous_backup_and_leaves_no_partial_file(tmp_path):
    """Client.backup writes FILE.partial and renames it only when whole: a connection lost
    after the first chunk must neither replace nor truncate yesterday's backup."""
    from app.client import Client, ServerUnreachable

    class CutOff(httpx.SyncByteStream):
        def __iter__(self):
            yield b"\x1f\x8b first chunk of a new archive"
            raise httpx.ReadError("connection reset by peer")

    dest = tmp_path / "study.tar.gz"
    dest.write_bytes(b"yesterday's backup")
    client = Client("http://127.0.0.1:9", token="")
    client._http = httpx.Client(base_url=client.url, transport=httpx.MockTransport(
        lambda request: httpx.Response(200, stream=CutOff())))
    with client, pytest.raises(ServerUnreachable, match="connection reset"):
        client.backup(dest)
    assert dest.read_bytes() == b"yesterday's backup"
    assert not (tmp_path / "study.tar.gz.partial").exists()
