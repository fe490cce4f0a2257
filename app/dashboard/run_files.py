"""The arrays a page draws from a run's folder, read once per version of each file.

A run still training rewrites artifacts/rates.npz and checkpoints/last.pt after every
epoch, and a page open on a 100-epoch run redraws its histograms on each: a file is
read again only when it was replaced (its inode, size or mtime changed), and only its
latest version is kept (a page open for days sees hundreds). The Run, Compare and
Studies pages each hold one.
"""

from __future__ import annotations

import pickle
import threading
import zipfile

import numpy as np

from engine.rundir import RunDir
from jobs.models import JobsError
from jobs.service import JobService

Arrays = dict[str, np.ndarray]


class RunFiles:
    def __init__(self, jobs: JobService):
        self.jobs = jobs
        self._kept: dict[tuple[str, str], tuple[tuple, Arrays]] = {}  # (run, file) -> (version, arrays)
        # a figure's build and its CSV download may run at once (Panel's threads, if configured)
        self._lock = threading.Lock()

    def npz(self, run_id: str, name: str) -> Arrays | None:
        """artifacts/NAME.npz of the run; None if it is not there (yet)."""
        try:
            path = self.jobs.artifact_path(run_id, f"artifacts/{name}.npz")
        except JobsError:
            return None

        def load() -> Arrays:
            with np.load(path) as data:
                return {k: data[k] for k in data.files}
        return self._read(run_id, name, path, load)

    def latest_weights(self, run_id: str) -> tuple[Arrays, int] | None:
        """The weights of the run's latest checkpoint and the epoch they end; None before
        its first epoch ends."""
        run = RunDir(self.jobs.data.run_dir(run_id))

        def load() -> Arrays:
            weights, epoch = run.load_weights_at("last")
            return {"epoch": np.array(epoch), **{k: v.numpy() for k, v in weights.items()}}
        arrays = self._read(run_id, "checkpoint", run.checkpoint_path, load)
        if arrays is None:
            return None
        return {k: v for k, v in arrays.items() if k != "epoch"}, int(arrays["epoch"])

    def _read(self, run_id: str, name: str, path, load) -> Arrays | None:
        try:
            stat = path.stat()
        except OSError:  # not written yet
            return None
        # writers replace files (os.replace: a new inode); size and mtime besides, for
        # filesystems that reuse inodes or stamp coarse times
        version = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
        with self._lock:
            kept = self._kept.get((run_id, name))
        if kept is not None and kept[0] == version:
            return kept[1]
        try:
            arrays = load()
        except (OSError, ValueError, RuntimeError, KeyError, EOFError, zipfile.BadZipFile,
                pickle.UnpicklingError):  # replaced while read, or damaged: the next update has it
            return None
        with self._lock:
            self._kept[(run_id, name)] = (version, arrays)
        return arrays
