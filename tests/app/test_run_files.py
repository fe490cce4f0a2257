"""RunFiles: the Run and Studies pages read a run's arrays once per version of each file."""

from __future__ import annotations

import os

import numpy as np
import torch

from app.dashboard.run_files import RunFiles
from engine.rundir import RunDir
from jobs.models import RunKind
from tests.app.test_compare_page import jobs  # noqa: F401  (the store fixture)


def _bump(path, seconds: int) -> None:
    """A distinct mtime, whatever the filesystem's timestamp granularity."""
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + seconds * 10**9))


def test_a_file_is_read_once_per_version_and_only_its_latest_is_kept(jobs):  # noqa: F811
    run_id = jobs.store.create_run(RunKind.TRAIN, {}).id
    run = RunDir(jobs.data.run_dir(run_id))
    files = RunFiles(jobs)
    assert files.npz(run_id, "rates") is None and files.latest_weights(run_id) is None  # nothing yet
    run.artifacts.mkdir(parents=True)
    np.savez(run.artifacts / "rates.npz", rate_e_hz=np.full(4, 7.0), epoch=np.array(1))
    first = files.npz(run_id, "rates")
    assert first["rate_e_hz"].tolist() == [7.0] * 4 and files.npz(run_id, "rates") is first
    np.savez(run.artifacts / "rates.npz", rate_e_hz=np.full(4, 9.0), epoch=np.array(2))
    _bump(run.artifacts / "rates.npz", 1)
    assert files.npz(run_id, "rates")["rate_e_hz"].tolist() == [9.0] * 4
    assert len(files._kept) == 1  # the older version is gone

    run.checkpoint_path.parent.mkdir(parents=True)
    run.save_checkpoint({"weights": {"W_out": torch.full((2, 2), 0.5)}, "epoch": 3})
    weights, epoch = files.latest_weights(run_id)
    assert epoch == 3 and weights["W_out"].tolist() == [[0.5, 0.5]] * 2 and set(weights) == {"W_out"}
    assert files.latest_weights(run_id)[0]["W_out"] is weights["W_out"]  # cached
    for damaged in (b"half a checkpoint", b""):  # caught mid-replace, or a disk that filled up
        run.checkpoint_path.write_bytes(damaged)
        _bump(run.checkpoint_path, 2)
        assert files.latest_weights(run_id) is None  # the next epoch's update reads it whole
    (run.artifacts / "rates.npz").write_bytes(np.load.__doc__.encode()[:100])  # not a zip
    _bump(run.artifacts / "rates.npz", 3)
    assert files.npz(run_id, "rates") is None
    assert files.npz("feedbeef0000", "rates") is None  # an unknown run
