"""The run folder: one layout wherever a run was made.

    config.json        the run's Config
    metrics.jsonl      one JSON object per finished epoch
    checkpoints/last.pt weights + optimiser state after the last finished epoch
    summary.json       final figures, convergence slopes and flags
    artifacts/         rates.npz, weights_init.npz, weights_final.npz, ...

Writes go to a temporary file first and are renamed into place, so a crash
never leaves a half-written checkpoint or summary.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.config import Config


class RunDir:
    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    config_path = property(lambda self: self.root / "config.json")
    metrics_path = property(lambda self: self.root / "metrics.jsonl")
    summary_path = property(lambda self: self.root / "summary.json")
    checkpoint_path = property(lambda self: self.root / "checkpoints" / "last.pt")
    artifacts = property(lambda self: self.root / "artifacts")

    def create(self, config: Config) -> None:
        (self.root / "checkpoints").mkdir(parents=True, exist_ok=True)
        self.artifacts.mkdir(exist_ok=True)
        _atomic_write_text(self.config_path, config.to_json())

    def read_config(self) -> Config:
        return Config.from_json(self.config_path.read_text())

    # --- metrics ------------------------------------------------------------
    def read_metrics(self) -> list[dict[str, Any]]:
        if not self.metrics_path.exists():
            return []
        records = []
        for line in self.metrics_path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                break
        return records

    def append_metrics(self, record: dict[str, Any]) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, last_epoch: int) -> list[dict[str, Any]]:
        """Keep the records of epochs <= last_epoch (those the checkpoint covers)."""
        kept = [r for r in self.read_metrics() if r["epoch"] <= last_epoch]
        _atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))
        return kept

    # --- checkpoints ------------------------------------------------------------
    def save_checkpoint(self, state: dict[str, Any]) -> None:
        tmp = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.checkpoint_path)

    def load_checkpoint(self) -> dict[str, Any] | None:
        if not self.checkpoint_path.exists():
            return None
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)

    def load_weights(self, which: str = "final") -> dict[str, torch.Tensor]:
        """Weights from artifacts (`init` / `final`), or the last checkpoint (`last`)."""
        if which == "last":
            return self.load_weights_at("last")[0]
        with np.load(self.artifacts / f"weights_{which}.npz") as data:
            return {name: torch.from_numpy(data[name]) for name in data.files}

    def load_weights_at(self, which: str = "final") -> tuple[dict[str, torch.Tensor], int | None]:
        """The weights and the epoch they are from: the checkpoint's own (`last`, read once),
        the last recorded epoch (`final`), 0 (`init`); None when no epoch is recorded."""
        if which != "last":
            return self.load_weights(which), 0 if which == "init" else (len(self.read_metrics()) or None)
        checkpoint = self.load_checkpoint()
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint in {self.root}")
        return checkpoint["weights"], int(checkpoint["epoch"])

    # --- artifacts and summary ----------------------------------------------------
    def save_arrays(self, name: str, arrays: dict[str, np.ndarray]) -> Path:
        path = self.artifacts / f"{name}.npz"
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, path)
        return path

    def save_summary(self, summary: dict[str, Any]) -> None:
        _atomic_write_text(self.summary_path, json.dumps(summary, indent=2))


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
