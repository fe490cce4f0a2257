"""What one run may ask of this server, checked when it is submitted.

A run's peak memory and its work are estimated from its config and refused
with a 422 that states the estimate and the limit, so no request can queue a
worker that the OOM killer ends (and the scheduler retries) or that would train
for years. The estimates are linear models fitted to measured peaks
(docs/PERFORMANCE.md, canonical network 800 E + 200 I, 784 inputs, batch 64 x
2,000 steps, float32): reference training 10.1 GB, fast training 97 MB.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from engine.config import Config
from engine.data import TIER_SIZES

# Reference backend: autograd keeps every step's state: ~78 bytes per
# (sample, step, neuron) and the dense input (4 bytes per input per sample-step).
_REF_BYTES_PER_NEURON_STEP = 78.0
_REF_BYTES_PER_INPUT_STEP = 4.0
# Fast backend: chunk starts and one chunk's tape: 1/100 of that, plus its fixed buffers.
_FAST_BYTES_PER_NEURON_STEP = 0.78
_FAST_FIXED_BYTES = 64e6
# weights, their gradients and two Adam moments
_COPIES_PER_WEIGHT = 4
_PROCESS_BYTES = 400e6  # python, torch and the data tier


@dataclass(frozen=True)
class RunEstimate:
    memory_bytes: float
    sample_steps: float   # simulated (sample, step) pairs over the whole run


def estimate(config: Config) -> RunEstimate:
    n = config.n_e + config.n_i
    samples_steps_per_batch = float(config.batch_size) * config.n_steps
    scale = 2.0 if config.dtype == "float64" else 1.0
    if config.backend == "reference":
        per_step = _REF_BYTES_PER_NEURON_STEP * n + _REF_BYTES_PER_INPUT_STEP * config.n_input
        activity = samples_steps_per_batch * per_step
    else:
        activity = samples_steps_per_batch * _FAST_BYTES_PER_NEURON_STEP * n + _FAST_FIXED_BYTES
    weights = (float(config.n_input) * config.n_e + 2.0 * config.n_e * config.n_i
               + float(config.n_e) * config.n_out) * 4 * _COPIES_PER_WEIGHT
    memory = _PROCESS_BYTES + scale * (activity + weights)
    sample_steps = float(config.epochs) * TIER_SIZES[config.tier] * config.n_steps
    return RunEstimate(memory, sample_steps)


def machine_memory_bytes() -> float:
    """Physical memory, or the container's cgroup limit where that is lower."""
    try:
        memory = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        memory = 8e9
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            raw = Path(path).read_text().strip()
        except OSError:
            continue
        if raw.isdigit():
            memory = min(memory, float(raw))
    return memory


@dataclass(frozen=True)
class RunLimits:
    """Per run: memory a worker may need, simulated sample-steps; per request
    (sweep, study): their sum over its runs."""
    memory_bytes: float
    sample_steps: float = 1e11          # ~12 days of the fast backend on 2 cores (~1e5 sample-steps/s)
    request_sample_steps: float = 1e12

    @classmethod
    def for_machine(cls, environ: Mapping[str, str] | None = None) -> "RunLimits":
        """Memory: 80 % of this machine's RAM (or cgroup limit) for one run, unless
        SPIKEBOARD_RUN_MEMORY_GB says otherwise; SPIKEBOARD_RUN_SAMPLE_STEPS sets the
        work. Runs that fit alone but not side by side are the scheduler's matter
        (fewer --workers), not a reason to refuse them."""
        environ = os.environ if environ is None else environ
        memory = 0.8 * machine_memory_bytes()
        if environ.get("SPIKEBOARD_RUN_MEMORY_GB"):
            memory = float(environ["SPIKEBOARD_RUN_MEMORY_GB"]) * 1e9
        steps = float(environ.get("SPIKEBOARD_RUN_SAMPLE_STEPS") or cls.sample_steps)
        return cls(memory_bytes=memory, sample_steps=steps, request_sample_steps=10 * steps)

    def check(self, config: Config) -> list[tuple[str, str]]:
        """(field, message) for each limit `config` exceeds; empty if it fits."""
        found = estimate(config)
        errors = []
        if found.memory_bytes > self.memory_bytes:
            field = _largest_size_field(config)
            hint = " (the fast backend needs ~1/100 of it)" if config.backend == "reference" else ""
            errors.append((field, f"this run needs an estimated {_gb(found.memory_bytes)} of memory "
                                  f"(n_e + n_i = {config.n_e + config.n_i}, batch_size {config.batch_size}, "
                                  f"{config.n_steps} steps, backend {config.backend}){hint}; this server allows "
                                  f"{_gb(self.memory_bytes)} per run"))
        if found.sample_steps > self.sample_steps:
            errors.append(("epochs", f"this run simulates an estimated {found.sample_steps:.3g} sample-steps "
                                     f"({config.epochs} epochs x {TIER_SIZES[config.tier]} images x "
                                     f"{config.n_steps} steps); this server allows {self.sample_steps:.3g} per run"))
        return errors

    def check_request(self, configs: list[Config]) -> list[tuple[str, str]]:
        total = sum(estimate(c).sample_steps for c in configs)
        if total > self.request_sample_steps:
            return [("grid", f"the {len(configs)} runs simulate an estimated {total:.3g} sample-steps in all; "
                             f"this server allows {self.request_sample_steps:.3g} per request")]
        return []


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


def _largest_size_field(config: Config) -> str:
    """The size furthest above its canonical value: the field to name in a refusal."""
    ratios = {"n_e": (config.n_e + config.n_i) / 1000, "batch_size": config.batch_size / 64,
              "t_ms": config.n_steps / 2000}
    return max(ratios, key=ratios.get)
