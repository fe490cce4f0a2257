"""The one object that fully describes a run: network, input, training and data.

Defaults follow shared/spec/MODEL.md. A `Config` is frozen, validated once when it
is built, and round-trips through JSON (`to_dict` / `from_dict`). Fields whose
default depends on the network (`ei_strength` on `arch`; `v_grad_dampen` on whether
the E->I->E loop is closed) are given as None and resolved at construction, so a
stored config is explicit.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, fields
from typing import Any

import torch

ARCHS = ("ping", "coba")
TIERS = ("smoke", "small", "medium", "large")
BACKENDS = ("reference", "fast")
WEIGHT_NAMES = ("W_in", "W_ei", "W_ie", "W_out")
DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Architecture-dependent defaults (MODEL.md "Populations and wiring").
_ARCH_DEFAULTS = {
    "ping": {"ei_strength": 0.05},
    "coba": {"ei_strength": 0.0},
}
# MODEL.md "Gradients": dampening 1000 where the E->I->E loop is closed (PING is
# defined by ei > 0 and ie > 0, not by the arch label), 1 where it is open. So an
# arch="ping" run with ei_strength 0 or ie_strength 0 (nb036's edges) trains undamped.
CLOSED_LOOP_DAMPEN = 1000.0
OPEN_LOOP_DAMPEN = 1.0


class ConfigError(ValueError):
    """A config field has an invalid value; `field` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name} {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Config:
    """Everything that determines a run. Units: ms, mV, Hz, leak conductances."""

    # Architecture and populations
    arch: str = "ping"
    n_input: int = 784
    n_e: int = 800
    n_i: int = 200
    n_out: int = 10
    # Wiring
    w_in_sparsity: float = 0.95
    w_in_scale: float = 1.0
    p_ei: float = 0.2
    ei_strength: float | None = None  # resolved from arch: ping 0.05, coba 0
    p_ie: float = 0.2
    ie_strength: float = 1.0
    w_out_std: float = 0.01
    # Cells (E | I)
    tau_m_e_ms: float = 20.0
    tau_m_i_ms: float = 10.0
    e_l_mv: float = -65.0
    v_reset_mv: float = -65.0
    v_th_mv: float = -50.0
    t_ref_e_ms: float = 2.0
    t_ref_i_ms: float = 1.0
    e_ampa_mv: float = 0.0
    e_gaba_mv: float = -80.0
    tau_ampa_ms: float = 2.0
    tau_gaba_ms: float = 9.0
    # Time and input
    dt_ms: float = 0.1
    t_ms: float = 200.0
    max_rate_hz: float = 100.0
    tau_out_ms: float = 20.0
    # Gradients
    beta: float = 1.0
    v_grad_dampen: float | None = None  # resolved from the loop: closed 1000, open 1
    grad_clip: float = 1.0  # global norm; 0 disables clipping
    detach_recurrent: bool = False
    detach_reset: bool = True
    trainable: tuple[str, ...] = ("W_in", "W_out")
    # Optional regularisers (off when their weight is 0)
    rate_reg_weight: float = 0.0
    rate_target_hz: float = 10.0
    mem_reg_weight: float = 0.0
    mem_theta: float = 1.0
    # Training and data
    tier: str = "smoke"
    seed: int = 42
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    # Execution
    backend: str = "fast"  # spike-identical to "reference" (the executable spec), 10-30x faster
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        # Accept torch dtypes and lists for convenience; store plain JSON values.
        if isinstance(self.dtype, torch.dtype):
            names = {v: k for k, v in DTYPES.items()}
            if self.dtype not in names:
                raise ConfigError("dtype", f"must be one of {sorted(DTYPES)}, got {self.dtype}")
            object.__setattr__(self, "dtype", names[self.dtype])
        if isinstance(self.trainable, (list, str)):
            value = (self.trainable,) if isinstance(self.trainable, str) else self.trainable
            object.__setattr__(self, "trainable", tuple(value))
        _validate(self)
        for name, default in _ARCH_DEFAULTS[self.arch].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, default)
        if self.v_grad_dampen is None:
            object.__setattr__(self, "v_grad_dampen", CLOSED_LOOP_DAMPEN if self.loop_closed else OPEN_LOOP_DAMPEN)
        _validate_resolved(self)

    # --- derived quantities -------------------------------------------------
    @property
    def loop_closed(self) -> bool:
        """The E->I->E loop is closed (MODEL.md's definition of PING)."""
        return bool(self.ei_strength) and self.ie_strength > 0

    @property
    def n_steps(self) -> int:
        return int(round(self.t_ms / self.dt_ms))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    def replace(self, **changes: Any) -> "Config":
        return dataclasses.replace(self, **changes)

    # --- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["trainable"] = list(self.trainable)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(unknown[0], "is not a config field")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "Config":
        return cls.from_dict(json.loads(text))


# --- validation ---------------------------------------------------------------

_POSITIVE = (
    "n_input", "n_e", "n_i", "n_out", "tau_m_e_ms", "tau_m_i_ms", "tau_ampa_ms",
    "tau_gaba_ms", "dt_ms", "t_ms", "tau_out_ms", "beta", "epochs", "batch_size", "lr",
)
_NON_NEGATIVE = (
    "w_in_scale", "ie_strength", "w_out_std", "t_ref_e_ms", "t_ref_i_ms", "max_rate_hz",
    "grad_clip", "rate_reg_weight", "rate_target_hz", "mem_reg_weight", "seed",
)
_PROBABILITIES = ("w_in_sparsity", "p_ei", "p_ie")
_CHOICES = {"arch": ARCHS, "tier": TIERS, "backend": BACKENDS, "dtype": tuple(DTYPES)}
_INTS = ("n_input", "n_e", "n_i", "n_out", "epochs", "batch_size", "seed")
_BOOLS = ("detach_recurrent", "detach_reset")


def _check_types(config: Config) -> None:
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name in _INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f.name, f"must be an integer, got {value!r}")
        elif f.name in _BOOLS:
            if not isinstance(value, bool):
                raise ConfigError(f.name, f"must be true or false, got {value!r}")
        elif f.name in _CHOICES or f.name == "device":
            if not isinstance(value, str):
                raise ConfigError(f.name, f"must be a string, got {value!r}")
        elif f.name != "trainable" and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f.name, f"must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f.name, f"must be finite, got {value!r}")


def _validate(config: Config) -> None:
    _check_types(config)
    for name, choices in _CHOICES.items():
        if getattr(config, name) not in choices:
            raise ConfigError(name, f"must be one of {list(choices)}, got {getattr(config, name)!r}")
    for name in _POSITIVE:
        if getattr(config, name) <= 0:
            raise ConfigError(name, f"must be > 0, got {getattr(config, name)}")
    for name in _NON_NEGATIVE:
        if getattr(config, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(config, name)}")
    for name in _PROBABILITIES:
        if not 0.0 <= getattr(config, name) <= 1.0:
            raise ConfigError(name, f"must be in [0, 1], got {getattr(config, name)}")
    if config.ei_strength is not None and config.ei_strength < 0:
        raise ConfigError("ei_strength", f"must be >= 0, got {config.ei_strength}")
    if config.v_grad_dampen is not None and config.v_grad_dampen < 1:
        raise ConfigError("v_grad_dampen", f"must be >= 1, got {config.v_grad_dampen}")
    if config.v_th_mv <= config.v_reset_mv:
        raise ConfigError("v_th_mv", f"must be above v_reset_mv ({config.v_reset_mv}), got {config.v_th_mv}")
    if not config.trainable or any(name not in WEIGHT_NAMES for name in config.trainable):
        raise ConfigError("trainable", f"must be a non-empty subset of {list(WEIGHT_NAMES)}, got {list(config.trainable)}")
    if len(set(config.trainable)) != len(config.trainable):
        raise ConfigError("trainable", f"lists a weight twice: {list(config.trainable)}")
    _validate_extremes(config)
    if config.n_steps < 1:
        raise ConfigError("t_ms", f"must cover at least one step of dt_ms, got {config.t_ms}")
    if not (config.device == "cpu" or config.device == "cuda" or config.device.startswith("cuda:")):
        raise ConfigError("device", f"must be 'cpu', 'cuda' or 'cuda:N', got {config.device!r}")


# Values no run can use, refused here rather than failing inside a worker: torch
# seeds are 64-bit signed; counts beyond 2^31 overflow tensor indexing long
# before memory runs out; a step under a microsecond is no neuron model.
MAX_SEED = 2**63 - 1
MAX_COUNT = 2**31 - 1
MIN_DT_MS = 1e-3


def _validate_extremes(config: Config) -> None:
    if config.seed > MAX_SEED:
        raise ConfigError("seed", f"must be <= 2^63 - 1, got {config.seed}")
    for name in ("n_input", "n_e", "n_i", "n_out", "epochs", "batch_size"):
        if getattr(config, name) > MAX_COUNT:
            raise ConfigError(name, f"must be <= 2^31 - 1, got {getattr(config, name)}")
    if config.dt_ms < MIN_DT_MS:
        raise ConfigError("dt_ms", f"must be >= {MIN_DT_MS} ms, got {config.dt_ms}")
    if not config.t_ms / config.dt_ms <= MAX_COUNT:
        raise ConfigError("t_ms", f"must be at most 2^31 - 1 steps of dt_ms, got {config.t_ms}")


def _validate_resolved(config: Config) -> None:
    if config.arch == "coba" and config.ei_strength != 0:
        raise ConfigError("ei_strength", f"must be 0 for arch 'coba' (the E->I loop is open), got {config.ei_strength}")
