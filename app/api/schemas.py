"""Request and response models. The run config model is derived from the engine's
`Config` dataclass (names, types, defaults), so it is never written twice."""

from __future__ import annotations

import typing
from dataclasses import MISSING, fields
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, model_validator

from engine.config import ARCHS, BACKENDS, DTYPES, RECIPES, TIERS, VARIANT_CHOICES, Config
from jobs.models import QueueStatus, Run, RunKind, RunState, Sweep

# NaN and Infinity are no JSON numbers (Python's parser takes them): refused as input
STRICT = ConfigDict(strict=True, extra="forbid", allow_inf_nan=False)

# Choice fields get enums in the schema (the engine validates them again).
_CHOICES: dict[str, tuple[str, ...]] = {"arch": ARCHS, "tier": TIERS, "backend": BACKENDS,
                                       "dtype": tuple(DTYPES), "recipe": RECIPES}


def _config_model() -> type[BaseModel]:
    hints = typing.get_type_hints(Config)
    definitions: dict[str, Any] = {}
    for f in fields(Config):
        annotation = Literal[_CHOICES[f.name]] if f.name in _CHOICES else hints[f.name]
        if f.name in VARIANT_CHOICES:  # None: the recipe's value
            annotation = Literal[VARIANT_CHOICES[f.name]] | None
        if f.name == "trainable":
            annotation = list[str]  # JSON has arrays, not tuples
        elif f.name == "dale_weights":
            annotation = list[str] | None
        default = f.default if f.default is not MISSING else f.default_factory()
        if isinstance(default, tuple):
            default = list(default)
        definitions[f.name] = (annotation, Field(default=default))
    return create_model("RunConfig", __config__=STRICT,
                        __doc__="A run's config: every field of the engine's Config, all optional.",
                        **definitions)


RunConfig = _config_model()


class RunCreate(BaseModel):
    model_config = STRICT
    config: RunConfig = Field(default_factory=RunConfig)  # type: ignore[valid-type]


class RunPublic(BaseModel):
    id: str
    kind: RunKind
    state: RunState
    config: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: float
    error: str | None
    code_version: str | None
    sweep_id: str | None
    source_run_id: str | None
    attempt: int
    # defaults: a newer client reads the runs of a server from before these fields
    restarts: int = 0  # attempts that a server stop or restart ended (not counted against the retry budget)
    priority: int = 0  # queued runs are served highest priority first, then oldest first
    n_epochs: int
    resumed_from_epoch: int | None
    cancel_requested: bool
    # sent back to the queue by its user (POST /api/runs/{id}/requeue): running, its worker is
    # stopping; queued, it waits its turn instead of taking the next free slot back
    requeue_requested: bool = False
    worker_pid: int | None
    heartbeat_at: float | None

    @classmethod
    def of(cls, run: Run) -> "RunPublic":
        return cls(id=run.id, kind=run.kind, state=run.state, config=run.config, created_at=run.created_at,
                   started_at=run.started_at, finished_at=run.finished_at, progress=run.progress,
                   error=run.error, code_version=run.code_version, sweep_id=run.sweep_id,
                   source_run_id=run.source_run_id, attempt=run.attempt, restarts=run.restarts,
                   priority=run.priority, n_epochs=run.n_epochs,
                   resumed_from_epoch=run.resumed_from_epoch, cancel_requested=run.cancel_requested,
                   requeue_requested=run.requeued_at is not None, worker_pid=run.worker_pid, heartbeat_at=run.heartbeat_at)


class RunsPublic(BaseModel):
    data: list[RunPublic]
    count: int


class MetricsPublic(BaseModel):
    data: list[dict[str, Any]]
    count: int


class AnalysisCreate(BaseModel):
    model_config = STRICT
    name: str = Field(min_length=1, max_length=100)
    params: dict[str, Any] = Field(default_factory=dict)


class SpectrumPublic(BaseModel):
    freqs_hz: list[float]
    power: list[float]
    peak_hz: float
    prominence: float


class RasterPublic(BaseModel):
    """One test image through a run's network: spike times per population, the E
    population rate (1 ms bins) and its spectrum (null for trials under ~60 ms)."""
    sample: int
    label: int
    t_ms: float
    n_e: int
    n_i: int
    ei_factor: float
    ie_factor: float
    correct: bool
    rate_e_hz: float
    rate_i_hz: float
    e_times_ms: list[float]
    e_cells: list[int]
    i_times_ms: list[float]
    i_cells: list[int]
    rate_time_ms: list[float]
    population_rate_hz: list[float]
    spectrum: SpectrumPublic | None


class ArtifactPublic(BaseModel):
    name: str
    size_bytes: int


class ArtifactsPublic(BaseModel):
    data: list[ArtifactPublic]
    count: int


GridValue = bool | int | float | str | list[str]


class SweepCreate(BaseModel):
    """`config` is the base config every grid point starts from, named as in
    POST /api/runs; `base` is its old name, still accepted (not both)."""
    model_config = STRICT
    config: RunConfig | None = None  # type: ignore[valid-type]
    base: RunConfig | None = Field(default=None, deprecated=True,  # type: ignore[valid-type]
                                   description="deprecated: the old name of `config`")
    # values of config fields: scalars, or lists of names (trainable)
    grid: dict[str, list[GridValue]] = Field(min_length=1, max_length=64,
                                             examples=[{"arch": ["ping", "coba"], "seed": [42, 43]}])

    @model_validator(mode="after")
    def _one_base(self) -> "SweepCreate":
        if self.config is not None and self.base is not None:
            raise ValueError("give the base config as `config` (or the deprecated `base`), not both")
        return self

    def base_config(self) -> dict[str, Any]:
        chosen = self.config if self.config is not None else self.base
        return (chosen or RunConfig()).model_dump()


class SweepPublic(BaseModel):
    id: str
    state: RunState
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    created_at: float
    run_ids: list[str]
    counts: dict[str, int]

    @classmethod
    def of(cls, sweep: Sweep) -> "SweepPublic":
        counts = {s.value: sum(1 for c in sweep.child_states if c is s) for s in RunState}
        return cls(id=sweep.id, state=sweep.state, base=sweep.base, grid=sweep.grid,
                   created_at=sweep.created_at, run_ids=list(sweep.run_ids), counts=counts)


class SweepsPublic(BaseModel):
    data: list[SweepPublic]
    count: int


class AnalysisPublic(BaseModel):
    name: str
    description: str
    defaults: dict[str, Any]


class AnalysesPublic(BaseModel):
    data: list[AnalysisPublic]
    count: int


class ErrorPublic(BaseModel):
    """Every 4xx answer but a 422: what went wrong, in words."""
    detail: str


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    queued: int
    running: int
    paused: bool = Field(default=False,  # a client of this version reads an older server's health too
                         description="the queue is paused: queued runs wait (POST /api/queue/resume)")


class QueuePublic(BaseModel):
    """The queue as a whole. While paused, no queued run starts; running runs go on."""
    paused: bool
    paused_at: float | None = Field(description="when it was paused (Unix time); null while it serves runs")
    queued: int
    running: int

    @classmethod
    def of(cls, status: QueueStatus) -> "QueuePublic":
        return cls(paused=status.paused, paused_at=status.paused_at, queued=status.queued,
                   running=status.running)


# --- studies -----------------------------------------------------------------------------

class StudyPresetPublic(BaseModel):
    name: str
    title: str
    description: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    analyses: list[dict[str, Any]]
    needs_source: bool
    report: list[str]


class StudyPresetsPublic(BaseModel):
    data: list[StudyPresetPublic]
    count: int


class StudyCreate(BaseModel):
    model_config = STRICT
    # config fields, grid axes (lists) or analysis parameters: see GET /api/studies
    overrides: dict[str, Any] = Field(default_factory=dict, examples=[{"tier": "smoke", "epochs": 2}])
    source_run_id: str | None = Field(default=None, min_length=1, max_length=100)


class StudyMemberPublic(BaseModel):
    run_id: str
    label: str
    role: Literal["train", "analysis"]
    analysis: str
    state: RunState | None  # None: the run was deleted


class StudyPublic(BaseModel):
    id: str
    name: str
    state: RunState
    progress: float
    created_at: float
    source_run_id: str | None
    sweep_id: str | None
    plan: dict[str, Any]
    members: list[StudyMemberPublic]

    @classmethod
    def of(cls, study: Any) -> "StudyPublic":
        return cls(id=study.id, name=study.name, state=study.state, progress=study.progress,
                   created_at=study.created_at, source_run_id=study.source_run_id, sweep_id=study.sweep_id,
                   plan=study.plan, members=[StudyMemberPublic(run_id=m.run_id, label=m.label, role=m.role,
                                                               analysis=m.analysis, state=m.state)
                                             for m in study.members])


class StudiesPublic(BaseModel):
    data: list[StudyPublic]
    count: int


# --- FORCE experiments (engine.force) ------------------------------------------------------
from engine.force.names import EXPERIMENT_NAMES as FORCE_EXPERIMENTS  # noqa: E402 (no torch)


class ForceExperimentPublic(BaseModel):
    name: str
    description: str
    defaults: dict[str, Any]


class ForceExperimentsPublic(BaseModel):
    data: list[ForceExperimentPublic]
    count: int


class ForceRunCreate(BaseModel):
    """One FORCE experiment; `params` are its parameters (see GET /api/force/experiments),
    `params.config` any ForceConfig fields. Missing keys take the experiment's defaults."""
    model_config = STRICT
    experiment: Literal[tuple(sorted(FORCE_EXPERIMENTS))]  # type: ignore[valid-type]
    params: dict[str, Any] = Field(default_factory=dict, examples=[{"config": {"n": 200}}])
