"""The app's one settings object: defaults, then SPIKEBOARD_* environment variables,
then explicit values (the `spikeboard serve` flags that were given).

pydantic-settings reads and validates the environment; the CLI's serve flags
default to None, so a variable is only overridden by a flag the user typed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

from jobs.executors import EXECUTORS
from jobs.paths import DEFAULT_DATA_DIR

ENV_PREFIX = "SPIKEBOARD_"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, frozen=True, extra="forbid")

    data_dir: Path = Field(Path(DEFAULT_DATA_DIR), description="SQLite store and run folders")
    host: str = Field("127.0.0.1", description="interface to listen on")
    port: int = Field(8000, ge=0, le=65535, description="port to listen on")
    workers: int = Field(1, ge=0, description="concurrent runs on a CPU box or a Ray cluster (0: queue only)")
    analysis_slots: int = Field(1, ge=0, description="extra worker slots that only analyses (inference jobs "
                                                    "of minutes) use, so they need not wait behind hours of "
                                                    "queued training; 0: analyses queue with training")
    runs_per_gpu: int = Field(1, ge=1, description="on a CUDA box (local executor): runs sharing each GPU")
    pack_runs: int = Field(1, ge=1, description="on a CUDA box (local executor): compatible queued fast-backend "
                                                "training runs trained by one worker as one packed job, at most "
                                                "this many (1: no packing; nb024's six cells: 6)")
    threads_per_run: int = Field(1, ge=1, description="torch threads per worker, so N workers do not "
                                                     "oversubscribe cores")
    token: str | None = Field(None, min_length=8, description='when set, mutating endpoints need '
                                                              '"Authorization: Bearer <token>" (8+ characters)')
    cancel_grace_s: float = Field(3.0, gt=0, description="SIGTERM -> SIGKILL")
    stale_after_s: float = Field(30.0, gt=0, description="heartbeat age after which a running run is requeued")
    paused: bool = Field(False, description="start with the queue paused: no queued run starts until "
                                            "POST /api/queue/resume (spikeboard queue resume). The pause is "
                                            "kept in the store: a later start without this flag holds it too")
    use_gpus: bool = True
    dashboard: bool = Field(True, description="serve the Panel pages beside the API (off: API only, faster start)")
    executor: str = Field("local", description='"local" (subprocesses) or "ray" (one Ray task per run)')
    ray_address: str | None = Field(None, description='Ray cluster to join ("auto", HOST:PORT, '
                                                      'ray://HOST:PORT); unset: a Ray instance on this machine')
    public_url: str | None = Field(None, pattern=r"^https?://[^/\s]+(/[^\s]*)?$",
                                   description="the URL Ray workers on other machines reach this server at "
                                               "(http://HOST:PORT); unset: http://<host>:<port>, 127.0.0.1 "
                                               "for a wildcard bind (workers on this machine only)")

    @field_validator("token", "ray_address", "public_url", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _consistent(self) -> "Settings":
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.ray_address is not None and self.executor != "ray":
            raise ValueError("ray_address is set but executor is not 'ray'")
        return self

    @property
    def worker_url(self) -> str:
        """Where remote workers send their reports (the Ray executor's workers)."""
        if self.public_url:
            return self.public_url.rstrip("/")
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{'[' + host + ']' if ':' in host else host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        return self.host in LOOPBACK_HOSTS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> "Settings":
        """Defaults, then SPIKEBOARD_<FIELD> variables (of `environ`, default os.environ),
        then the overrides that are not None (CLI flags)."""
        given = {k: v for k, v in overrides.items() if v is not None}
        if environ is None or environ is os.environ:
            return cls(**given)
        # every field passed explicitly: os.environ is not consulted
        defaults = {name: info.default for name, info in cls.model_fields.items()}
        return cls(**{**defaults, **_MappingSource(cls, environ)(), **given})

    def with_(self, **changes: Any) -> "Settings":
        return type(self)(**{**self.model_dump(), **changes})


class _MappingSource(EnvSettingsSource):
    """The environment source reading a given mapping instead of os.environ (tests)."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]) -> None:
        self._mapping = dict(environ)
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {k.lower(): v for k, v in self._mapping.items()}


def field_help(name: str) -> str:
    """A serve flag's help: what the setting is, its variable and its default."""
    info = Settings.model_fields[name]
    what = f"{info.description}; " if info.description else ""
    return f"{what}env {ENV_PREFIX}{name.upper()}, default {info.default}"
