"""Executors start and stop worker processes; the store stays the source of truth.

`LocalExecutor` runs one subprocess per run on this machine; `RayExecutor` runs
each run as a Ray task (ray imported only when one is built). Both implement the
`Executor` protocol (submit / cancel / poll / is_alive / free_slots / shutdown)
and launch the same worker, `python -m jobs.worker`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from jobs.executors.base import Executor, Exited
from jobs.executors.local import LocalExecutor

__all__ = ["EXECUTORS", "Executor", "Exited", "LocalExecutor", "make_executor"]

EXECUTORS = ("local", "ray")


def make_executor(name: str, *, data_dir: str | Path, slots: int = 1, threads_per_run: int = 1,
                  grace_s: float = 3.0, use_gpus: bool = True, runs_per_gpu: int = 1,
                  ray_address: str | None = None, server_url: str | None = None,
                  issue_credential: Callable[[str, int], str] | None = None) -> Executor:
    """`slots` is the number of runs at once: on this machine's CPU for local
    (its GPUs decide on a CUDA box), on the cluster for Ray. With `server_url`, Ray
    workers report over the API with a credential from `issue_credential(run_id,
    attempt)` and need no shared disk; without, they open the store (this host only)."""
    if name == "local":
        return LocalExecutor(data_dir, slots=slots, threads_per_run=threads_per_run, grace_s=grace_s,
                             use_gpus=use_gpus, runs_per_gpu=runs_per_gpu)
    if name == "ray":
        from jobs.executors.ray import RayExecutor

        return RayExecutor(data_dir, address=ray_address, slots=slots, threads_per_run=threads_per_run,
                           grace_s=grace_s, server_url=server_url, issue_credential=issue_credential)
    raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {name!r}")
