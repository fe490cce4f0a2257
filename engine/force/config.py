"""`ForceConfig`: everything that determines one FORCE training of a LIF network
or its rate twin (shared/spec/FORCE.md).

Frozen, validated once when built (a bad value raises `ConfigError` naming the
field), and round-trips through JSON. Units are in the names (ms, mV, Hz, s);
the simulation itself works in seconds, so rates are in Hz and `alpha` has the
study's units (5e-6 = 0.1 dt for dt = 0.05 ms).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

from engine.config import DTYPES, ConfigError

TASKS = ("sine", "sum_of_sines", "product_of_sines", "sawtooth", "vdp_harmonic", "vdp_relaxation",
         "lorenz", "fourier", "ode_to_joy", "pitchfork")
ENCODERS = ("symmetric", "centred")  # Q * U[-1, 1] (Nicola & Clopath) or Q * (U[0, 1] - 0.5) (the study's code)
NETWORKS = ("lif", "rate")
# The time loop: "reference" is simulate.py's torch loop (any device, the executable spec),
# "compiled" engine/force/compiled.py's numba loop (CPU); "auto" picks compiled on CPU.
BACKENDS = ("auto", "reference", "compiled")

# Task-dependent defaults, resolved at construction so a stored config is explicit.
_TASK_FREQ_HZ = {"sine": 5.0, "sawtooth": 2.0, "fourier": 1.0, "vdp_harmonic": 2.0, "vdp_relaxation": 2.0}
_TASK_TAU_D_MS = {"lorenz": 100.0}


@dataclass(frozen=True)
class ForceConfig:
    """One network, one task, one learning protocol. Defaults: FORCE.md."""

    # Network
    n: int = 2000
    p: float = 0.1
    g: float = 0.04
    q: float = 10.0
    encoder: str = "symmetric"
    dt_ms: float = 0.05
    tau_m_ms: float = 10.0
    tau_ref_ms: float = 2.0
    v_reset_mv: float = -65.0
    v_peak_mv: float = -40.0
    bias_mv: float = -40.0
    tau_r_ms: float = 2.0
    tau_d_ms: float | None = None  # resolved from task: 20 ms (Lorenz 100 ms)
    # FORCE.md gives [-65, -40]; with the bias at v_peak such a network never fires
    # (nothing lifts v to threshold), so the default is Nicola & Clopath's code's [-65, 30].
    v_init_low_mv: float = -65.0
    v_init_high_mv: float = 30.0
    rate_init_hz: float = 20.0  # rate twin: filtered rates start uniform in [0, this]
    # Task
    task: str = "sine"
    freq_hz: float | None = None  # resolved from task where it has one
    lorenz_speed: float = 1.0  # Lorenz model time units per second
    input_gain: float = 10.0  # encoder magnitude of a task's input (HDTS, pitchfork pulses)
    # FORCE / RLS
    alpha: float = 5e-6
    update_every: int = 50
    warmup_s: float = 5.0
    learn_s: float = 5.0
    test_s: float = 5.0
    # Recording and execution
    trace_every_ms: float = 1.0
    seed: int = 0
    dtype: str = "float32"
    device: str = "cpu"
    backend: str = "auto"

    def __post_init__(self) -> None:
        if self.tau_d_ms is None:
            object.__setattr__(self, "tau_d_ms", _TASK_TAU_D_MS.get(self.task, 20.0))
        if self.freq_hz is None and self.task in _TASK_FREQ_HZ:
            object.__setattr__(self, "freq_hz", _TASK_FREQ_HZ[self.task])
        _validate(self)

    # --- derived quantities (seconds) -------------------------------------------
    dt_s = property(lambda self: self.dt_ms * 1e-3)
    warmup_steps = property(lambda self: _steps(self.warmup_s, self.dt_s))
    learn_steps = property(lambda self: _steps(self.learn_s, self.dt_s))
    test_steps = property(lambda self: _steps(self.test_s, self.dt_s))
    n_steps = property(lambda self: self.warmup_steps + self.learn_steps + self.test_steps)
    trace_every = property(lambda self: max(1, _steps(self.trace_every_ms * 1e-3, self.dt_s)))
    compiled = property(lambda self: self.backend == "compiled" or (self.backend == "auto" and self.device == "cpu"))

    @property
    def torch_dtype(self):
        import torch  # here, not at import: see engine.config

        return getattr(torch, self.dtype)

    def replace(self, **changes: Any) -> "ForceConfig":
        return dataclasses.replace(self, **changes)

    # --- serialisation ------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ForceConfig":
        if not isinstance(data, dict):
            raise ConfigError("config", "must be an object of ForceConfig fields")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], "is not a ForceConfig field")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "ForceConfig":
        return cls.from_dict(json.loads(text))


def _steps(seconds: float, dt_s: float) -> int:
    steps = seconds / dt_s
    # a tiny dt_ms (1e-310) made int() overflow: any count this large fails the run's step limit
    return int(round(steps)) if steps < 1e15 else 10**15


def _number(config: ForceConfig, name: str, low: float, high: float, *, integer: bool = False,
            open_low: bool = False) -> None:
    value = getattr(config, name)
    kinds = (int,) if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite {'integer' if integer else 'number'}, got {value!r}")
    if value < low or value > high or (open_low and value == low):
        bracket = "(" if open_low else "["
        raise ConfigError(name, f"must be in {bracket}{low}, {high}], got {value!r}")


def _choice(config: ForceConfig, name: str, choices) -> None:
    if getattr(config, name) not in choices:
        raise ConfigError(name, f"must be one of {list(choices)}, got {getattr(config, name)!r}")


def _validate(c: ForceConfig) -> None:
    _number(c, "n", 2, 20000, integer=True)
    _number(c, "p", 0.0, 1.0, open_low=True)
    for name in ("g", "q", "input_gain", "rate_init_hz", "warmup_s", "test_s"):
        _number(c, name, 0.0, 1e4)
    _number(c, "learn_s", 0.0, 1e4)
    for name in ("dt_ms", "tau_m_ms", "tau_r_ms", "tau_d_ms", "trace_every_ms", "lorenz_speed"):
        _number(c, name, 0.0, 1e4, open_low=True)
    _number(c, "tau_ref_ms", 0.0, 1e3)
    for name in ("v_reset_mv", "v_peak_mv", "bias_mv", "v_init_low_mv", "v_init_high_mv"):
        _number(c, name, -1e3, 1e3)
    if c.v_peak_mv <= c.v_reset_mv:
        raise ConfigError("v_peak_mv", f"must be above v_reset_mv ({c.v_reset_mv}), got {c.v_peak_mv}")
    if c.v_init_high_mv < c.v_init_low_mv:
        raise ConfigError("v_init_high_mv", f"must be >= v_init_low_mv ({c.v_init_low_mv})")
    _number(c, "alpha", 0.0, 1e6, open_low=True)
    _number(c, "update_every", 1, 10**6, integer=True)
    _number(c, "seed", 0, 2**63 - 1, integer=True)
    _choice(c, "task", TASKS)
    _choice(c, "encoder", ENCODERS)
    _choice(c, "dtype", tuple(DTYPES))
    if c.freq_hz is not None:
        _number(c, "freq_hz", 0.0, 1e3, open_low=True)
    elif c.task in _TASK_FREQ_HZ:
        raise ConfigError("freq_hz", f"is needed by task {c.task}")
    if c.test_steps < 1:
        raise ConfigError("test_s", "must cover at least one time step")
    if c.n_steps > 2 * 10**7:
        raise ConfigError("test_s", f"the run has {c.n_steps} steps; at most 2e7 are allowed")
    if not isinstance(c.device, str) or not (c.device == "cpu" or c.device.startswith("cuda")):
        raise ConfigError("device", f"must be 'cpu', 'cuda' or 'cuda:N', got {c.device!r}")
    _choice(c, "backend", BACKENDS)
    if c.backend == "compiled" and c.device != "cpu":
        raise ConfigError("backend", f"'compiled' runs on the CPU only; use 'reference' or 'auto' on {c.device}")
