"""Where things live under the data directory."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DATA_DIR = "./spikeboard-data"
TEMPORARY_MARK = ".tmp"  # in the name of a file still being written (renamed into place when whole)


def is_temporary(path: Path) -> bool:
    """A file a writer is still filling (engine.rundir, analyses, the remote copy of a run folder)."""
    return TEMPORARY_MARK in path.name
DB_NAME = "spikeboard.db"


@dataclass(frozen=True)
class DataDir:
    root: Path

    @classmethod
    def at(cls, root: str | os.PathLike) -> "DataDir":
        return cls(Path(root).resolve())

    @property
    def db_path(self) -> Path:
        return self.root / DB_NAME

    @property
    def runs_root(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs_root / run_id
