"""How any executor starts the worker: the command line and its environment."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from jobs.worker import THREADS_ENV


def repo_root() -> str:
    return str(Path(__file__).resolve().parents[2])


def worker_argv(python: str, data_dir: str | Path, *runs: tuple[str, int]) -> list[str]:
    """The worker's command line for one run, or for the runs of a pack: (run id, attempt) each."""
    return [python, "-m", "jobs.worker", str(data_dir), *(str(part) for run in runs for part in run)]


def worker_env(environ: Mapping[str, str], threads: int) -> dict[str, str]:
    """The parent's environment with the thread limits (so N workers do not
    oversubscribe the cores) and this checkout importable as `jobs`."""
    env = dict(environ)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), **{THREADS_ENV: str(threads)})
    env["PYTHONPATH"] = os.pathsep.join(p for p in (repo_root(), env.get("PYTHONPATH")) if p)
    return env


def run_device(config: Mapping) -> str:
    """The device a run's record asks for: a train run's `device`, or the network
    config's inside a FORCE experiment's params."""
    if "device" in config:
        return str(config["device"])
    network = config.get("params", {}).get("config", {}) if isinstance(config.get("params"), Mapping) else {}
    return str(network.get("device", "cpu")) if isinstance(network, Mapping) else "cpu"


def cuda_index(config: Mapping) -> int | None:
    """N for a run pinned to "cuda:N"; None for "cuda" (any GPU) and the CPU."""
    device = run_device(config)
    index = device.partition("cuda:")[2]
    return int(index) if device.startswith("cuda:") and index.isdigit() else None


def wants_gpu(config: Mapping) -> bool:
    return run_device(config).startswith("cuda")
