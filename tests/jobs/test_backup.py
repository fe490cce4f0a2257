"""`spikeboard backup` / `restore`: a live data directory to one .tar.gz, and back."""

import io
import json
import sqlite3
import tarfile

import pytest

from app.cli import main as cli_main
from jobs.backup import BackupError, backup, restore
from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.store import RunStore


def _live_data_dir(root):
    """A store with an open connection (its latest commits still in the WAL) and the
    folders of a running and a succeeded run, as a server leaves them mid-training."""
    data = DataDir.at(root)
    store = RunStore(data.db_path)
    running = store.create_run(RunKind.TRAIN, {"arch": "ping", "epochs": 4})
    done = store.create_run(RunKind.TRAIN, {"arch": "coba", "epochs": 1})
    queued = store.create_run(RunKind.TRAIN, {"arch": "ping", "epochs": 1})  # never started: no folder
    for run in (running, done):
        store.claim(run.id)
    store.record_epoch(running.id, 1, {"epoch": 1, "test_acc": 50.0})
    store.record_epoch(done.id, 1, {"epoch": 1, "test_acc": 60.0})
    store.transition(done.id, RunState.SUCCEEDED)
    for run, epochs in ((running, 2), (done, 1)):  # the running folder is an epoch ahead of the store
        folder = data.run_dir(run.id)
        (folder / "checkpoints").mkdir(parents=True)
        (folder / "checkpoints" / "last.pt").write_bytes(b"weights at epoch %d" % epochs)
        (folder / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e}) + "\n" for e in range(1, epochs + 1)))
        (folder / "artifacts").mkdir()
        (folder / "artifacts" / "rates.npz").write_bytes(b"rates")
    # files still being written, as the engine names them (renamed into place when whole)
    (data.run_dir(running.id) / "checkpoints" / "last.tmp").write_bytes(b"half a checkpoint")
    (data.run_dir(running.id) / "artifacts" / "rates.tmp.npz").write_bytes(b"half written")
    return data, store, running, done, queued


def test_a_live_store_restores_whole_with_its_running_runs_queued_to_resume(tmp_path):
    data, store, running, done, queued = _live_data_dir(tmp_path / "data")
    assert (tmp_path / "data" / "spikeboard.db-wal").stat().st_size > 0  # commits not yet in the main file
    try:
        summary = backup(data, tmp_path / "study.tar.gz")
    finally:
        store.close()
    assert (summary.runs, summary.files) == (3, 1 + 3 + 3)
    restored = restore(summary.path, DataDir.at(tmp_path / "elsewhere"))
    assert (restored.runs, restored.requeued) == (3, (running.id,))

    again = RunStore(tmp_path / "elsewhere" / "spikeboard.db")
    try:
        states = {run.id: (run.state, run.restarts, run.n_epochs) for run in again.list_runs()[0]}
        assert states == {running.id: (RunState.QUEUED, 1, 1), done.id: (RunState.SUCCEEDED, 0, 1),
                          queued.id: (RunState.QUEUED, 0, 0)}
        assert again.metrics(done.id) == [{"epoch": 1, "test_acc": 60.0}]
    finally:
        again.close()
    copy = tmp_path / "elsewhere" / "runs" / running.id
    assert (copy / "checkpoints" / "last.pt").read_bytes() == b"weights at epoch 2"
    assert (copy / "metrics.jsonl").read_text().count("\n") == 2
    assert not (copy / "checkpoints" / "last.tmp").exists()  # files still being written are left out
    assert not (copy / "artifacts" / "rates.tmp.npz").exists()
    assert not (tmp_path / "elsewhere" / "runs" / queued.id).exists()


def test_each_run_folder_is_archived_checkpoint_first(tmp_path):
    """The engine appends an epoch's record before it saves the checkpoint: copying the
    checkpoint first means a copied folder never has a checkpoint ahead of its records."""
    data, store, running, done, _ = _live_data_dir(tmp_path / "data")
    store.close()
    with tarfile.open(backup(data, tmp_path / "b.tar.gz").path) as tar:
        names = tar.getnames()
    assert names[0] == "spikeboard.db"
    for run in (running, done):
        mine = [n for n in names if n.startswith(f"runs/{run.id}/")]
        assert mine[0] == f"runs/{run.id}/checkpoints/last.pt" and f"runs/{run.id}/metrics.jsonl" in mine


def test_the_snapshot_is_one_self_contained_file(tmp_path):
    data, store, *_ = _live_data_dir(tmp_path / "data")
    try:
        path = backup(data, tmp_path / "b.tar.gz").path
    finally:
        store.close()
    with tarfile.open(path) as tar:
        assert not [n for n in tar.getnames() if n.endswith(("-wal", "-shm"))]
        tar.extract("spikeboard.db", tmp_path / "x", filter="data")
    with sqlite3.connect(tmp_path / "x" / "spikeboard.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        assert conn.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 2


def test_backup_refuses_what_it_cannot_do_and_leaves_no_file(tmp_path):
    with pytest.raises(BackupError, match="no spikeboard store"):
        backup(DataDir.at(tmp_path / "nothing"), tmp_path / "b.tar.gz")
    data, store, *_ = _live_data_dir(tmp_path / "data")
    store.close()
    with pytest.raises(BackupError, match="inside the data directory"):
        backup(data, tmp_path / "data" / "b.tar.gz")
    with pytest.raises(BackupError, match="no such directory"):
        backup(data, tmp_path / "missing" / "b.tar.gz")
    (tmp_path / "folder").mkdir()
    with pytest.raises(BackupError, match="is a directory"):
        backup(data, tmp_path / "folder")
    assert not list(tmp_path.glob("*.tar.gz*"))


def _tar(path, entries):
    with tarfile.open(path, "w:gz") as tar:
        for name, payload in entries:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path


@pytest.mark.parametrize("entries, reason", [
    ([("runs/abc/config.json", b"{}")], "holds no spikeboard.db"),
    ([("spikeboard.db", b""), ("runs/../../escape.txt", b"x")], "unexpected entry"),
    ([("spikeboard.db", b""), ("notes.txt", b"x")], "unexpected entry"),
    ([("spikeboard.db", b"not sqlite at all, just text of some length" * 20)], "damaged"),
])
def test_restore_refuses_an_archive_that_is_not_a_backup(tmp_path, entries, reason):
    with pytest.raises(BackupError, match=reason):
        restore(_tar(tmp_path / "bad.tar.gz", entries), DataDir.at(tmp_path / "target"))
    assert not (tmp_path / "target").exists() and not (tmp_path / ".target.restoring").exists()


def test_restore_never_merges_into_a_store(tmp_path):
    data, store, *_ = _live_data_dir(tmp_path / "data")
    store.close()
    path = backup(data, tmp_path / "b.tar.gz").path
    with pytest.raises(BackupError, match="is not empty"):
        restore(path, data)
    (tmp_path / "empty").mkdir()  # the mount point of a new disk: kept, filled
    assert restore(path, DataDir.at(tmp_path / "empty")).runs == 3
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == ["runs", "spikeboard.db"]
    (tmp_path / "text.tar.gz").write_text("hello")
    with pytest.raises(BackupError, match="not a tar archive"):
        restore(tmp_path / "text.tar.gz", DataDir.at(tmp_path / "t2"))
    with pytest.raises(BackupError, match="no such file"):
        restore(tmp_path / "missing.tar.gz", DataDir.at(tmp_path / "t3"))


def test_the_cli_says_what_it_did_and_why_it_refused(tmp_path, capsys):
    data, store, *_ = _live_data_dir(tmp_path / "data")
    store.close()
    out = tmp_path / "b.tar.gz"
    assert cli_main(["backup", "--data-dir", str(data.root), "--to", str(out)]) == 0
    assert "backed up 3 run(s)" in capsys.readouterr().out
    assert cli_main(["restore", str(out), "--data-dir", str(tmp_path / "new")]) == 0
    said = capsys.readouterr().out
    assert "restored 3 run(s)" in said and "1 that were running are queued again" in said
    assert cli_main(["restore", str(out), "--data-dir", str(tmp_path / "new")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("spikeboard: ") and "not empty" in err and "Traceback" not in err
