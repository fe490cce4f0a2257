"""A data directory as one .tar.gz, taken while the server runs, and served again elsewhere.

A server's data directory is its SQLite store and one folder per run, so copying it is
how a study moves to a GPU machine or outlives the disk it trained on. A plain copy of a
live directory can tear, though: the store runs in WAL mode (the latest commits sit in
spikeboard.db-wal until a checkpoint), and a training run replaces its checkpoint after
every epoch. `backup` therefore takes

1. the store through SQLite's online backup API: one consistent snapshot;
2. then each run folder the snapshot knows, file by file (each opened before it is sized,
   so a file replaced meanwhile is read whole, old or new; files still being written, named
   `*.tmp*`, are left out), **the checkpoint first**.
   The engine appends an epoch's record before it saves that epoch's checkpoint
   (engine.train), so a folder copied in this order never has a checkpoint ahead of its
   records; records past the checkpoint are dropped when the run resumes
   (`RunDir.truncate_metrics`).

The folders may be ahead of the snapshot by an epoch or two; a resumed run replays its
folder's records into the store (epochs are stored once), so none is lost or repeated.

`restore` unpacks a backup into a new data directory and gives back to the queue the runs
that the snapshot caught running: their workers were processes of the old server (the
same as a server restart, so it does not count against a run's retries).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import tarfile
import tempfile
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from jobs.models import JobsError, RunState
from jobs.paths import DB_NAME, DataDir, is_temporary
from jobs.store import RunStore

PARTIAL_SUFFIX = ".partial"  # the archive while it is written: renamed into place when whole
CHECKPOINTS = "checkpoints"


class BackupError(JobsError):
    """A backup or restore that cannot be done, with the reason a user can act on."""


@dataclass(frozen=True)
class BackupSummary:
    path: Path
    runs: int
    files: int
    bytes: int


@dataclass(frozen=True)
class RestoreSummary:
    data_dir: Path
    runs: int
    requeued: tuple[str, ...]  # runs the snapshot caught running, queued again to resume


def backup(data_dir: DataDir, out: str | os.PathLike) -> BackupSummary:
    """Write `data_dir` to the .tar.gz `out` (atomically: a failed backup leaves no file)."""
    try:
        return _backup(data_dir, Path(out))
    except OSError as exc:  # a full disk, a folder without write access: said, not a traceback
        raise BackupError(f"backup failed: {exc}") from exc


def restore(archive: str | os.PathLike, data_dir: DataDir) -> RestoreSummary:
    """Unpack the backup `archive` into `data_dir`, which must be new or empty: a backup
    is a whole store, and merging two stores' runs is not what a user restoring expects."""
    try:
        return _restore(Path(archive), data_dir)
    except OSError as exc:
        raise BackupError(f"restore failed: {exc}") from exc


def _backup(data_dir: DataDir, out: Path) -> BackupSummary:
    if not data_dir.db_path.is_file():
        raise BackupError(f"no spikeboard store in {data_dir.root} ({DB_NAME} not found)")
    out = out.resolve()
    if out.is_relative_to(data_dir.root):
        raise BackupError(f"{out} is inside the data directory it backs up: write it elsewhere")
    if out.is_dir():
        raise BackupError(f"{out} is a directory: name the archive file to write, e.g. {out / 'study.tar.gz'}")
    if not out.parent.is_dir():
        raise BackupError(f"{out.parent}: no such directory")
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    files = 0
    try:
        with tempfile.TemporaryDirectory(dir=out.parent, prefix=".spikeboard-backup-") as tmp:
            snapshot = Path(tmp) / DB_NAME
            run_ids = _snapshot_store(data_dir.db_path, snapshot)
            with tarfile.open(partial, "w:gz", compresslevel=1) as tar:  # checkpoints are floats: level 1 is as small
                tar.add(snapshot, arcname=DB_NAME)
                for run_id in run_ids:
                    files += _add_run_folder(tar, data_dir.run_dir(run_id), PurePosixPath("runs", run_id))
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return BackupSummary(out, len(run_ids), files + 1, out.stat().st_size)


def _restore(archive: Path, data_dir: DataDir) -> RestoreSummary:
    if not archive.is_file():
        raise BackupError(f"{archive}: no such file")
    target = data_dir.root
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise BackupError(f"{target} is not empty: restore into a new data directory")
    # unpacked beside the target, or inside it when it exists (an empty mount point of a new
    # disk cannot be replaced), then moved into place: a failed restore leaves no store
    staging = target / ".restoring" if target.exists() else target.with_name(f".{target.name}.restoring")
    shutil.rmtree(staging, ignore_errors=True)  # left by a restore that was interrupted
    try:
        _unpack(archive, staging)
        runs, requeued = _requeue_running(staging / DB_NAME)
        if target.exists():
            for entry in staging.iterdir():
                entry.rename(target / entry.name)
            staging.rmdir()
        else:
            os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return RestoreSummary(target, runs, tuple(requeued))


def _snapshot_store(db_path: Path, snapshot: Path) -> list[str]:
    """Copy the live store to `snapshot` in one consistent step; the ids of its runs."""
    source = sqlite3.connect(db_path, timeout=10)
    try:
        copy = sqlite3.connect(snapshot)
        try:
            source.backup(copy)
            copy.execute("PRAGMA journal_mode = DELETE")  # one self-contained file, no -wal beside it
            return [row[0] for row in copy.execute("SELECT id FROM runs ORDER BY created_at, id")]
        finally:
            copy.close()
    except sqlite3.Error as exc:
        raise BackupError(f"cannot read the store {db_path}: {exc}") from exc
    finally:
        source.close()


def _add_run_folder(tar: tarfile.TarFile, folder: Path, arcname: PurePosixPath) -> int:
    """Add the folder's files, the checkpoint first (see the module's docstring); a queued
    run that never started has no folder. Returns the number of files added."""
    if not folder.is_dir():
        return 0
    paths = sorted((p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()),
                   key=lambda p: (p.relative_to(folder).parts[0] != CHECKPOINTS, p.relative_to(folder).parts))
    added = 0
    for path in paths:
        if is_temporary(path):
            continue
        try:
            with path.open("rb") as f:  # sized from the open file: a replaced path is read whole
                info = tar.gettarinfo(arcname=str(arcname.joinpath(*path.relative_to(folder).parts)), fileobj=f)
                tar.addfile(info, f)
        except FileNotFoundError:  # a temporary file renamed away between listing and opening
            continue
        added += 1
    return added


def _unpack(archive: Path, staging: Path) -> None:
    try:
        tar = tarfile.open(archive, "r:*")
    except (tarfile.TarError, OSError) as exc:
        raise BackupError(f"{archive} is not a spikeboard backup (not a tar archive: {exc})") from exc
    with tar:
        try:
            members = tar.getmembers()
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{archive} is damaged: {exc}") from exc
        if not any(m.name == DB_NAME and m.isfile() for m in members):
            raise BackupError(f"{archive} is not a spikeboard backup: it holds no {DB_NAME}")
        for member in members:
            parts = PurePosixPath(member.name).parts
            inside = member.name == DB_NAME or (len(parts) >= 2 and parts[0] == "runs" and ".." not in parts)
            if not inside or not (member.isfile() or member.isdir()):
                raise BackupError(f"{archive} is not a spikeboard backup: unexpected entry {member.name!r}")
        staging.mkdir(parents=True)
        try:
            tar.extractall(staging, filter="data")
        except (tarfile.TarError, OSError, EOFError) as exc:
            raise BackupError(f"{archive} is damaged: {exc}") from exc


def _requeue_running(db_path: Path) -> tuple[int, list[str]]:
    try:
        with closing(sqlite3.connect(db_path)) as conn:  # closed: no -wal or -shm left beside it
            check = conn.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.Error as exc:
        raise BackupError(f"the backup's store is damaged: {exc}") from exc
    if check != "ok":
        raise BackupError(f"the backup's store is damaged: {check}")
    store = RunStore(db_path)
    try:
        running, _ = store.list_runs(state=RunState.RUNNING, limit=1_000_000)
        requeued = [run.id for run in running if store.requeue(run.id, run.attempt, restart=True)]
        _, total = store.list_runs(limit=1)
    finally:
        store.close()
    return total, requeued
