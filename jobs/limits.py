"""What one run may ask of this server, checked when it is submitted.

A run's peak memory and its work are estimated from its config and refused
with a 422 that states the estimate and the limit, so no request can queue a
worker that the OOM killer ends (and the scheduler retries) or that would train
for years. The reference's estimate is a linear model fitted to measured peaks
(docs/PERFORMANCE.md, canonical network 800 E + 200 I, 784 inputs, batch 64 x
2,000 steps, float32): reference training 10.1 GB. The fast backend's counts what
its CPU loop keeps (engine.fast.cpu): the state at every chunk start, whose chunks
shorten as the batch grows (engine.fast.common.chunk_steps), one chunk's tape, and
with the output-LIF readout that readout's [T, B, n_out] graph. Measured peaks:
canonical batch 64 97 MB; seed recipe batch 256 (docs/RESULTS.md, issue 24).
"""

from __future__ import annotations

import math
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
# Fast backend: buffers that do not grow with the run (numba, scratch).
_FAST_FIXED_BYTES = 64e6
# The output-LIF readout's autograd graph: about ten [B, n_out] tensors per step.
_LIF_READOUT_TENSORS_PER_STEP = 10
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
        activity = _fast_activity_bytes(config)
    weights = (float(config.n_input) * config.n_e + 2.0 * config.n_e * config.n_i
               + float(config.n_e) * config.n_out) * 4 * _COPIES_PER_WEIGHT
    memory = _PROCESS_BYTES + scale * (activity + weights)
    sample_steps = float(config.epochs) * TIER_SIZES[config.tier] * config.n_steps
    return RunEstimate(memory, sample_steps)


def _fast_activity_bytes(config: Config) -> float:
    """The fast backend's training memory in float32 (engine.fast.cpu): chunk-start
    states (v and g in the dtype, int32 ages), the backward's chunk tape (v2 and the
    leak factor, two more with exponential Euler, the conductance adjoint, the
    readout's dL/ds_e part), the output LIF's graph where it reads out."""
    from engine.fast.common import chunk_steps

    n, m, steps, batch = config.n_e + config.n_i, 2 * config.n_e + config.n_i, config.n_steps, config.batch_size
    chunk = chunk_steps(steps, batch, m)
    starts = math.ceil(steps / chunk) * batch * (2 * n + m) * 4.0
    tape_rows = 4 if config.integrator == "exponential_euler" else 2
    tape = chunk * batch * (tape_rows * n + m + config.n_e) * 4.0
    readout = 0.0
    if config.readout == "lif_mem_mean":
        readout = float(steps) * batch * config.n_out * 4.0 * _LIF_READOUT_TENSORS_PER_STEP
    return starts + tape + readout + _FAST_FIXED_BYTES


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
