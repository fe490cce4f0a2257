"""The app's one settings object, read from SPIKEBOARD_* environment variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Mapping

from jobs.executors import EXECUTORS
from jobs.paths import DEFAULT_DATA_DIR

ENV_PREFIX = "SPIKEBOARD_"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class Settings:
    data_dir: Path = Path(DEFAULT_DATA_DIR)
    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1             # concurrent runs on a CPU box or a Ray cluster (0: queue only)
    runs_per_gpu: int = 1        # on a CUDA box (local executor): runs sharing each GPU
    threads_per_run: int = 1     # torch threads per worker, so N workers do not oversubscribe cores
    token: str | None = None     # when set, mutating endpoints need "Authorization: Bearer <token>"
    cancel_grace_s: float = 3.0  # SIGTERM -> SIGKILL
    stale_after_s: float = 30.0  # heartbeat age after which a running run is requeued
    use_gpus: bool = True
    dashboard: bool = True       # serve the Panel pages beside the API (off: API only, faster start)
    executor: str = "local"      # "local" (subprocesses) or "ray" (one Ray task per run)
    ray_address: str | None = None  # None: a Ray instance on this machine; "auto", "HOST:PORT", "ray://HOST:PORT"

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir))
        if self.workers < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if self.threads_per_run < 1:
            raise ValueError(f"threads_per_run must be >= 1, got {self.threads_per_run}")
        if self.runs_per_gpu < 1:
            raise ValueError(f"runs_per_gpu must be >= 1, got {self.runs_per_gpu}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError("ray_address is set but executor is not 'ray'")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise ValueError("token must be at least 8 characters (or unset)")
        if self.cancel_grace_s <= 0 or self.stale_after_s <= 0:
            raise ValueError("cancel_grace_s and stale_after_s must be > 0")

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then SPIKEBOARD_<FIELD> variables, then explicit overrides (CLI flags)."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(ENV_PREFIX + f.name.upper())
            if raw is not None:
                values[f.name] = _parse(f.name, raw)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_(self, **changes: Any) -> "Settings":
        return replace(self, **changes)


def _parse(name: str, raw: str) -> Any:
    if name in ("port", "workers", "threads_per_run", "runs_per_gpu"):
        return int(raw)
    if name in ("cancel_grace_s", "stale_after_s"):
        return float(raw)
    if name in ("use_gpus", "dashboard"):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if name in ("token", "ray_address"):
        return raw or None
    return raw
