"""The one object that fully describes a run: network, input, training and data.

Defaults follow shared/spec/MODEL.md. A `Config` is frozen, validated once when it
is built, and round-trips through JSON (`to_dict` / `from_dict`). Fields whose
default depends on the recipe or the architecture (`n_e`, `integrator`,
`ei_strength`, ...) are given as None and resolved from `recipe`
and `arch` at construction (`v_grad_dampen`, where the recipe leaves it open, from
whether the E->I->E loop is closed), so a stored config is explicit: every field written.

Two recipes (MODEL.md, last section): `canonical`, the model written from the
seed's text, and `seed`, the study's own code (pinglab): exponential Euler,
kick-then-decay synapses, inclusive threshold, countdown refractory, a voltage
floor, 25 Hz input, µS/nF units, its weight init, Dale's sign constraint and an
output-LIF readout. Any field set explicitly overrides the recipe's value.
"""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a tensor is made, not here: the CLI and
    import torch  # the HTTP client read configs without paying torch's import

ARCHS = ("ping", "coba")
TIERS = ("smoke", "small", "medium", "large")
BACKENDS = ("reference", "fast")
RECIPES = ("canonical", "seed")
WEIGHT_NAMES = ("W_in", "W_ei", "W_ie", "W_out")
DTYPES = ("float32", "float64")  # torch dtype names

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


# --- Recipes (MODEL.md "The study's own recipe") -----------------------------
# Each recipe's value for every field given as None; `_ARCH_DEFAULTS` (canonical)
# and "arch" entries here depend on the architecture too. The seed recipe is read
# from pinglab: notebooks/nb024.py MODEL_RECIPES (26d540b), models.py (0b5617a),
# config.py build_net, cli/train.py.
_RECIPE_DEFAULTS: dict[str, dict[str, Any]] = {
    "canonical": {
        "n_e": 800, "n_i": 200, "w_in_scale": 1.0, "p_ei": 0.2, "p_ie": 0.2, "ie_strength": 1.0,
        "w_out_std": 0.01, "w_out_mean": 0.0, "w_out_scale": 1.0, "tau_m_i_ms": 10.0,
        "t_ref_e_ms": 2.0, "t_ref_i_ms": 1.0, "max_rate_hz": 100.0, "tau_out_ms": 20.0,
        "batch_size": 64, "lr": 1e-3,
        "integrator": "forward_euler", "synapse_order": "decay_then_add", "input_arrival": "next_step",
        "threshold_inclusive": False, "refractory_mode": "hold", "v_floor_mv": None,
        "conductance_unit": "leak", "init_scheme": "canonical", "dale_weights": (),
        "readout": "leaky", "skip_nonfinite": False,
    },
    "seed": {
        "n_e": 1024, "n_i": 256, "p_ei": 1.0, "p_ie": 1.0, "w_out_std": 3.8, "w_out_mean": 5.1,
        "tau_m_i_ms": 5.0, "t_ref_e_ms": 3.0, "t_ref_i_ms": 1.5, "max_rate_hz": 25.0,
        "tau_out_ms": 2.0, "batch_size": 256, "lr": 4e-4, "v_grad_dampen": 1000.0,
        "integrator": "exponential_euler", "synapse_order": "add_then_decay",
        "input_arrival": "same_step", "threshold_inclusive": True, "refractory_mode": "countdown",
        "v_floor_mv": -200.0, "conductance_unit": "uS", "init_scheme": "seed",
        "dale_weights": ("W_in", "W_out"), "readout": "lif_mem_mean", "skip_nonfinite": True,
        "arch": {  # nb024 MODEL_RECIPES: --w-in, --ei-strength (W_ie = 2 x), --readout-w-out-scale
            "ping": {"w_in_scale": 1.2, "ei_strength": 1.0, "ie_strength": 2.0, "w_out_scale": 500.0},
            "coba": {"w_in_scale": 0.3, "ei_strength": 0.0, "ie_strength": 0.0, "w_out_scale": 100.0},
        },
    },
}
# The model-variant choices, canonical's first.
VARIANT_CHOICES = {
    "integrator": ("forward_euler", "exponential_euler"),
    "synapse_order": ("decay_then_add", "add_then_decay"),
    "input_arrival": ("next_step", "same_step"),
    "refractory_mode": ("hold", "countdown"),
    "conductance_unit": ("leak", "uS"),
    "init_scheme": ("canonical", "seed"),
    "readout": ("leaky", "lif_mem_mean"),
}
# What the fast backend's Triton kernels run (keys are fields, values the choices
# they run). The compiled CPU loop and the torch-op loop run every option of both
# recipes, so a single run on a GPU whose model the kernels lack takes the torch-op
# loop; packed runs (Triton only) refuse it (engine.fast.common.check_loop_runs).
FAST_TRITON_SUPPORTED: dict[str, tuple[Any, ...]] = {
    "integrator": ("forward_euler",), "synapse_order": ("decay_then_add",),
    "input_arrival": ("next_step",), "threshold_inclusive": (False,), "refractory_mode": ("hold",),
    "v_floor_mv": (None,), "conductance_unit": ("leak",), "dale_weights": ((),), "readout": ("leaky",),
}


def fastest_backend(fields: dict[str, Any]) -> str:
    """The backend to pick on the user's behalf (the study presets) for the model that
    `fields` (a partial config) describe, never for an explicit choice: "fast", which
    runs both recipes on every device (engine.fast)."""
    return "fast"


def _recipe_values(recipe_name: str, arch: str) -> dict[str, Any]:
    """The values a recipe gives its None fields for an architecture."""
    recipe = _RECIPE_DEFAULTS[recipe_name]
    values = {k: v for k, v in recipe.items() if k != "arch"}
    values.update(recipe.get("arch", {}).get(arch, {}))
    if recipe_name == "canonical":
        values.update(_ARCH_DEFAULTS[arch])
    return values


def _resolve_recipe(config: "Config") -> None:
    """Fill every None field from the recipe (and, for arch-dependent ones, the arch)."""
    values = _recipe_values(config.recipe, config.arch)
    for name, default in values.items():
        if getattr(config, name) is None:
            object.__setattr__(config, name, default)


class ConfigError(ValueError):
    """A config field has an invalid value; `field` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name} {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class Config:
    """Everything that determines a run. Units: ms, mV, Hz, leak conductances."""

    # Architecture and populations. None: the recipe's value (see _RECIPE_DEFAULTS)
    recipe: str = "canonical"
    arch: str = "ping"
    n_input: int = 784
    n_e: int | None = None  # canonical 800, seed 1024
    n_i: int | None = None  # canonical 200, seed 256
    n_out: int = 10
    # Wiring
    w_in_sparsity: float = 0.95
    w_in_scale: float | None = None  # mean of a W_in entry (seed: before fan-in, µS)
    p_ei: float | None = None  # canonical 0.2, seed 1 (dense)
    ei_strength: float | None = None  # resolved from recipe and arch
    p_ie: float | None = None
    ie_strength: float | None = None
    w_out_std: float | None = None
    # Cells (E | I)
    tau_m_e_ms: float = 20.0
    tau_m_i_ms: float | None = None  # canonical 10, seed 5
    e_l_mv: float = -65.0
    v_reset_mv: float = -65.0
    v_th_mv: float = -50.0
    t_ref_e_ms: float | None = None  # canonical 2, seed 3
    t_ref_i_ms: float | None = None  # canonical 1, seed 1.5
    e_ampa_mv: float = 0.0
    e_gaba_mv: float = -80.0
    tau_ampa_ms: float = 2.0
    tau_gaba_ms: float = 9.0
    # Time and input
    dt_ms: float = 0.1
    t_ms: float = 200.0
    max_rate_hz: float | None = None  # canonical 100, seed 25
    tau_out_ms: float | None = None  # readout time constant: canonical 20, seed 2
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
    batch_size: int | None = None  # canonical 64, seed 256
    lr: float | None = None  # canonical 1e-3, seed 4e-4
    # --- Model variant: the axes on which the seed recipe differs (MODEL.md, last
    # section). None: the recipe's value. Canonical values first, seed's second.
    integrator: str | None = None  # "forward_euler" | "exponential_euler" (g held over the step)
    synapse_order: str | None = None  # "decay_then_add" | "add_then_decay" (kick first, then decay)
    input_arrival: str | None = None  # "next_step" (delay 1, with the recurrence) | "same_step"
    threshold_inclusive: bool | None = None  # False: spike iff V > V_th; True: V >= V_th
    refractory_mode: str | None = None  # "hold" (R steps held) | "countdown" (R-1 held, R >= 1)
    v_floor_mv: float | None = None  # lower clamp on V after the update; canonical none (null)
    conductance_unit: str | None = None  # "leak" (units of g_L) | "uS" (with c_m in nF)
    c_m_e_nf: float = 1.0  # capacitances, used with conductance_unit "uS" (g_L = C / tau_m)
    c_m_i_nf: float = 0.5
    init_scheme: str | None = None  # "canonical" | "seed" (normal, fan-in normalised, rescaled)
    init_std_frac: float = 0.1  # seed scheme: std of W_in, W_ei, W_ie as a fraction of the mean
    w_out_mean: float | None = None  # W_out ~ w_out_scale * N(w_out_mean, w_out_std) [/ n_e]
    w_out_scale: float | None = None  # seed: readout_w_out_scale, 500 PING / 100 COBA
    dale_weights: tuple[str, ...] | None = None  # clamped >= 0 in the forward pass and after each step
    readout: str | None = None  # "leaky" (integrator) | "lif_mem_mean" (output LIF, subtract reset)
    readout_v_th: float = 1.0  # threshold of the output LIF (lif_mem_mean)
    skip_nonfinite: bool | None = None  # a non-finite step is skipped (seed) instead of stopping the run
    # Starting point: None draws fresh weights from `seed`; a run id fine-tunes that run's
    # trained weights, W_in / W_ei / W_ie times these multipliers (the What-if sliders).
    # The job service copies them into this run's folder (START_WEIGHTS in engine.train).
    init_run: str | None = None
    init_w_in_scale: float = 1.0
    init_w_ei_scale: float = 1.0
    init_w_ie_scale: float = 1.0
    # Execution
    backend: str = "fast"  # spike-identical to "reference" (the executable spec), 10-30x faster
    dtype: str = "float32"
    device: str = "cpu"

    def __post_init__(self) -> None:
        # Accept torch dtypes and lists for convenience; store plain JSON values.
        torch = sys.modules.get("torch")  # a torch dtype can only come from a caller that imported torch
        if torch is not None and isinstance(self.dtype, torch.dtype):
            name = str(self.dtype).removeprefix("torch.")
            if name not in DTYPES:
                raise ConfigError("dtype", f"must be one of {list(DTYPES)}, got {self.dtype}")
            object.__setattr__(self, "dtype", name)
        for name in ("trainable", "dale_weights"):
            value = getattr(self, name)
            if isinstance(value, (list, str)):
                object.__setattr__(self, name, (value,) if isinstance(value, str) else tuple(value))
        _validate(self)
        _resolve_recipe(self)
        if self.v_grad_dampen is None:  # canonical: from the loop, not the arch label
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
    def torch_dtype(self) -> "torch.dtype":
        import torch

        return getattr(torch, self.dtype)

    @property
    def torch_device(self) -> "torch.device":
        import torch

        return torch.device(self.device)

    def replace(self, **changes: Any) -> "Config":
        """A copy with `changes`. A new recipe, arch or coupling re-resolves the
        fields that held the old one's value (a field set to something else keeps
        it), so replace(recipe="seed") never yields a canonical model labelled seed,
        and replace(ei_strength=0) opens the loop's dampening too."""
        resolving = ("recipe", "arch", "ei_strength", "ie_strength")  # what the resolved fields follow
        if all(changes.get(k, getattr(self, k)) == getattr(self, k) for k in resolving):
            return dataclasses.replace(self, **changes)
        old = _recipe_values(self.recipe, self.arch)
        # canonical dampening follows the loop: a new coupling or arch re-resolves it too
        old.setdefault("v_grad_dampen", CLOSED_LOOP_DAMPEN if self.loop_closed else OPEN_LOOP_DAMPEN)
        kept = {k: v for k, v in self.to_dict().items()
                if k not in old or (tuple(v) if isinstance(v, list) else v) != old[k]}
        return Config.from_dict({**kept, **changes})

    # --- serialisation --------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["trainable"] = list(self.trainable)
        data["dale_weights"] = list(self.dale_weights)
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
_CHOICES = {"arch": ARCHS, "tier": TIERS, "backend": BACKENDS, "dtype": tuple(DTYPES),
            "recipe": RECIPES}
_INTS = ("n_input", "n_e", "n_i", "n_out", "epochs", "batch_size", "seed")
_BOOLS = ("detach_recurrent", "detach_reset")
# Model-variant fields: may be None before resolution (the recipe's value).
_OPTIONAL_CHOICES = VARIANT_CHOICES
_OPTIONAL_BOOLS = ("threshold_inclusive", "skip_nonfinite")
_POSITIVE_VARIANT = ("c_m_e_nf", "c_m_i_nf", "readout_v_th", "w_out_scale")


def _check_types(config: Config) -> None:
    for f in fields(config):
        value = getattr(config, f.name)
        if f.name == "init_run":
            _check_init_run(value)
            continue
        if value is None and (f.name in _INTS or f.name in _OPTIONAL_BOOLS or f.name in _OPTIONAL_CHOICES):
            continue  # resolved from the recipe
        if f.name in _INTS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f.name, f"must be an integer, got {value!r}")
        elif f.name in _BOOLS or f.name in _OPTIONAL_BOOLS:
            if not isinstance(value, bool):
                raise ConfigError(f.name, f"must be true or false, got {value!r}")
        elif f.name in _CHOICES or f.name in _OPTIONAL_CHOICES or f.name == "device":
            if not isinstance(value, str):
                raise ConfigError(f.name, f"must be a string, got {value!r}")
        elif f.name not in ("trainable", "dale_weights") and value is not None:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f.name, f"must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ConfigError(f.name, f"must be finite, got {value!r}")


def _validate(config: Config) -> None:
    _check_types(config)
    for name, choices in _CHOICES.items():
        if getattr(config, name) not in choices:
            raise ConfigError(name, f"must be one of {list(choices)}, got {getattr(config, name)!r}")
    for name, choices in _OPTIONAL_CHOICES.items():
        if getattr(config, name) is not None and getattr(config, name) not in choices:
            raise ConfigError(name, f"must be one of {list(choices)}, got {getattr(config, name)!r}")
    for name in _POSITIVE + _POSITIVE_VARIANT:
        if getattr(config, name) is not None and getattr(config, name) <= 0:
            raise ConfigError(name, f"must be > 0, got {getattr(config, name)}")
    for name in _NON_NEGATIVE + ("init_std_frac",):
        if getattr(config, name) is not None and getattr(config, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(config, name)}")
    for name in _PROBABILITIES:
        if getattr(config, name) is not None and not 0.0 <= getattr(config, name) <= 1.0:
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
    if config.dale_weights is not None:
        if not isinstance(config.dale_weights, tuple) or any(n not in ("W_in", "W_out") for n in config.dale_weights):
            raise ConfigError("dale_weights", f"must be a subset of ['W_in', 'W_out'], got {config.dale_weights!r}")
    _validate_extremes(config)
    _validate_start(config)
    if config.n_steps < 1:
        raise ConfigError("t_ms", f"must cover at least one step of dt_ms, got {config.t_ms}")
    if not (config.device == "cpu" or config.device == "cuda" or config.device.startswith("cuda:")):
        raise ConfigError("device", f"must be 'cpu', 'cuda' or 'cuda:N', got {config.device!r}")


INIT_RUN_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_")
INIT_SCALES = ("init_w_in_scale", "init_w_ei_scale", "init_w_ie_scale")


def _check_init_run(value: Any) -> None:
    # a run id names a folder: no separators, no dots, bounded
    if value is not None and (not isinstance(value, str) or not 0 < len(value) <= 64
                              or not set(value) <= INIT_RUN_CHARS):
        raise ConfigError("init_run", f"must be null or a run id (letters, digits, '-', '_'), got {value!r}")


def _validate_start(config: Config) -> None:
    for name in INIT_SCALES:
        if getattr(config, name) < 0:
            raise ConfigError(name, f"must be >= 0, got {getattr(config, name)}")
        if config.init_run is None and getattr(config, name) != 1.0:
            raise ConfigError(name, "multiplies another run's weights: set init_run too, or leave it 1")


# Values no run can use, refused here rather than failing inside a worker: torch
# seeds are 64-bit signed; counts beyond 2^31 overflow tensor indexing long
# before memory runs out; a step under a microsecond is no neuron model.
MAX_SEED = 2**63 - 1
MAX_COUNT = 2**31 - 1
MIN_DT_MS = 1e-3


def _validate_extremes(config: Config) -> None:
    if config.seed > MAX_SEED:
        raise ConfigError("seed", f"must be <= 2^63 - 1, got {config.seed}")
    for name in ("n_input", "n_e", "n_i", "n_out", "epochs", "batch_size"):  # None: the recipe's
        if (getattr(config, name) or 0) > MAX_COUNT:
            raise ConfigError(name, f"must be <= 2^31 - 1, got {getattr(config, name)}")
    if config.dt_ms < MIN_DT_MS:
        raise ConfigError("dt_ms", f"must be >= {MIN_DT_MS} ms, got {config.dt_ms}")
    if not config.t_ms / config.dt_ms <= MAX_COUNT:
        raise ConfigError("t_ms", f"must be at most 2^31 - 1 steps of dt_ms, got {config.t_ms}")


def _validate_resolved(config: Config) -> None:
    if config.arch == "coba" and config.ei_strength != 0:
        raise ConfigError("ei_strength", f"must be 0 for arch 'coba' (the E->I loop is open), got {config.ei_strength}")
    if config.v_floor_mv is not None and config.v_floor_mv >= config.v_reset_mv:
        raise ConfigError("v_floor_mv", f"must be below v_reset_mv ({config.v_reset_mv}), got {config.v_floor_mv}")

