"""What-if: a trained network re-simulated with its couplings, input and GABA decay changed.

`what_if(weights, config, test, knobs)` is one position of the What-if page's
sliders: W_ei, W_ie and W_in scaled by their multipliers (as in the coupling
sweep, `engine.analyses.coupling.scaled_weights`), the input's maximum rate and
the GABA decay time replaced, then one inference of the picked test image and of
`n_images` test images spread over the test set (`engine.inspect.test_subset`).
It returns what the page draws: the picked image's spike events and E / I
population rates, the E-rate spectrum over the N images with its gamma peak
(`engine.analyses.spectrum`), mean and per-cell rates over the N images, and
accuracy on them with its binomial standard error.

Every call with the same knobs sees the same input spikes: each image's Poisson
input comes from the generator the evaluation uses for it (`engine.encoding.
test_input_events`, keyed on run seed and image), so moving a slider changes the
network, not the draw, and an image here gets the spikes it gets on the Run and
Coupling pages (its raster at multipliers 1 is theirs). Inference always runs the
fast backend (spikes equal to the reference's in float64), on the device the
caller gives.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from typing import Callable

import numpy as np
import torch

from engine.analyses.coupling import scaled_weights
from engine.analyses.spectrum import Spectrum, gamma_spectrum, population_rate
from engine.config import Config, ConfigError
from engine.data import Split
from engine.encoding import InputEvents, test_input_events
from engine.fast.common import check_supported, fast_params, input_events, recurrence
from engine.fast.cpu import run_summary
from engine.fast.network import lif_readout_logits
from engine.reference import network_params
from engine.simulate import simulate
from engine.stability import EulerCheck, forward_euler_check
from engine.weights import Weights

MAX_SCALE = 100.0  # the coupling sweep's and the raster endpoint's bound on a multiplier
MAX_IMAGES = 256  # one what-if is an interactive call: bounded work
MAX_RATE_HZ = 1000.0  # q = p * rate * dt must stay a probability: 1000 Hz at dt 1 ms
MAX_TAU_GABA_MS = 500.0
HISTOGRAM_BINS = 30


@dataclass(frozen=True)
class Knobs:
    """One slider position. None keeps the run's own value."""

    w_ei_scale: float = 1.0  # E->I coupling multiplier
    w_ie_scale: float = 1.0  # I->E coupling multiplier
    w_in_scale: float = 1.0  # input weight multiplier
    max_rate_hz: float | None = None  # Poisson rate of a white pixel
    tau_gaba_ms: float | None = None  # GABA decay time
    sample: int = 0  # the test image whose raster is drawn
    n_images: int = 16  # test images behind the rates, histograms, spectrum and accuracy

    def __post_init__(self) -> None:
        for name in ("w_ei_scale", "w_ie_scale", "w_in_scale"):
            _check_number(name, getattr(self, name), 0.0, MAX_SCALE)
        if self.max_rate_hz is not None:
            _check_number("max_rate_hz", self.max_rate_hz, 0.0, MAX_RATE_HZ)
        if self.tau_gaba_ms is not None:
            _check_number("tau_gaba_ms", self.tau_gaba_ms, 0.0, MAX_TAU_GABA_MS, low_open=True)
        for name, low, high in (("sample", 0, None), ("n_images", 1, MAX_IMAGES)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(name, f"must be an integer, got {value!r}")
            if value < low or (high is not None and value > high):
                raise ConfigError(name, f"must be in [{low}, {high if high is not None else 'inf'}], got {value}")

    def resolved(self, config: Config) -> Knobs:
        """The knobs with the run's own values filled in."""
        return Knobs(self.w_ei_scale, self.w_ie_scale, self.w_in_scale,
                     config.max_rate_hz if self.max_rate_hz is None else self.max_rate_hz,
                     config.tau_gaba_ms if self.tau_gaba_ms is None else self.tau_gaba_ms,
                     self.sample, self.n_images)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_number(name: str, value, low: float, high: float, low_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(name, f"must be a finite number, got {value!r}")
    if value > high or value < low or (low_open and value == low):
        raise ConfigError(name, f"must be in {'(' if low_open else '['}{low:g}, {high:g}], got {value}")


@dataclass(frozen=True)
class Events:
    """Spikes of one population in one trial as (step, cell) pairs, in step order."""

    step: np.ndarray  # int32
    cell: np.ndarray  # int32


@dataclass(frozen=True)
class WhatIfResult:
    knobs: Knobs  # resolved: the values simulated
    dt_ms: float
    t_ms: float
    n_e: int
    n_i: int
    # the picked image
    label: int
    predicted: int
    raster_e: Events
    raster_i: Events
    rate_time_ms: np.ndarray  # bin centres, 1 ms bins
    population_rate_e_hz: np.ndarray
    population_rate_i_hz: np.ndarray
    # the N images
    n_images: int
    rate_e_hz: float
    rate_i_hz: float
    cell_rates_e_hz: np.ndarray  # [n_e], mean over the N images
    cell_rates_i_hz: np.ndarray  # [n_i]
    accuracy_pct: float
    accuracy_stderr_pct: float  # binomial: sqrt(p (1 - p) / N)
    accuracy_ci95_pct: tuple[float, float]  # Wilson score interval: not 0 wide at 0 or N of N correct
    spectrum: Spectrum | None  # E population rate, power averaged over the N images; None: trial too short
    gamma_peak_hz: float | None  # None without a peak (flat spectrum, or no spectrum)
    timings_s: dict  # where this call's time went: simulate, analyse

    @property
    def correct(self) -> bool:
        return self.label == self.predicted


def _subset_index(n_test: int, n_images: int) -> torch.Tensor:
    # an even spread over the (label-sorted) test set, as engine.inspect.test_subset
    return torch.linspace(0, n_test - 1, min(n_images, n_test)).round().long()


def _merged(first: InputEvents, rest: InputEvents) -> InputEvents:
    """Two batches' events as one batch (first's samples, then rest's), sorted as
    poisson_events sorts them: by (step, sample, channel)."""
    steps, b0, n_input = first.shape
    b1 = rest.shape[1]
    step = torch.cat([first.step, rest.step])
    sample = torch.cat([first.sample, rest.sample + b0])
    channel = torch.cat([first.channel, rest.channel])
    order = torch.sort((step * (b0 + b1) + sample) * n_input + channel).indices
    return InputEvents(step[order], sample[order], channel[order], (steps, b0 + b1, n_input))


def simulation_config(config: Config, knobs: Knobs, device: str = "cpu") -> Config:
    """The run's config at the slider position, on the fast backend."""
    knobs = knobs.resolved(config)
    # the readout-membrane penalty is a training term: inference does not compute it
    return config.replace(backend="fast", device=device, mem_reg_weight=0.0,
                          max_rate_hz=knobs.max_rate_hz, tau_gaba_ms=knobs.tau_gaba_ms)


@torch.no_grad()
def what_if(weights: Weights, config: Config, test: Split, knobs: Knobs, device: str = "cpu",
            threads: int = 1) -> WhatIfResult:
    """Simulate the picked test image and `knobs.n_images` test images through the
    run's weights at the slider position `knobs` (see the module docstring), on
    `threads` CPU threads (see `_simulate`)."""
    n_test = len(test.labels)
    if knobs.sample >= n_test:
        raise ConfigError("sample", f"must be in [0, {n_test - 1}], got {knobs.sample}")
    started = time.perf_counter()
    cfg = simulation_config(config, knobs, device)
    with _torch_threads(1):
        w = weights_at(weights, knobs, cfg)
        index = _subset_index(n_test, knobs.n_images)
        one = torch.tensor([knobs.sample])
        picked = test_input_events(test.images[one], test.image_ids(one), cfg)
        subset = test_input_events(test.images[index], test.image_ids(index), cfg)
        events = _merged(picked, subset).to(cfg.torch_device)
        out = _simulate(w, events, cfg, threads)
        simulated = time.perf_counter()
        analysed = _analyse(out, cfg, test, knobs, index)
    return WhatIfResult(**analysed, knobs=knobs.resolved(config),
                        timings_s={"simulate": simulated - started, "analyse": time.perf_counter() - simulated})


def weights_at(weights: Weights, knobs: Knobs, cfg: Config) -> dict[str, torch.Tensor]:
    """The run's weights at the slider position, on `cfg`'s device and dtype."""
    w = scaled_weights(weights, knobs.w_ei_scale, knobs.w_ie_scale)
    w = {name: t.to(device=cfg.torch_device, dtype=cfg.torch_dtype) for name, t in w.items()}
    w["W_in"] = w["W_in"] * knobs.w_in_scale
    return w


@torch.no_grad()
def euler_check(weights: Weights, config: Config, test: Split, knobs: Knobs, threads: int = 1,
                should_stop: Callable[[], bool] | None = None) -> EulerCheck | None:
    """Forward Euler's step factor h = dt g/C on the picked test image at the slider position
    (engine.stability; None where the run does not integrate with forward Euler). A strong
    coupling or input drives h past 2, where the membrane update overshoots and the rates
    are the integrator's: the coupling sweep marks such cells, and the What-if page says it.
    The reference loop over one image: about a second per 200 ms trial, so it is asked for
    apart from `what_if`, which stays interactive; `should_stop` ends it early
    (engine.stability.CheckStopped) when the slider moves on."""
    if knobs.sample >= len(test.labels):
        raise ConfigError("sample", f"must be in [0, {len(test.labels) - 1}], got {knobs.sample}")
    cfg = simulation_config(config, knobs)
    one = torch.tensor([knobs.sample])
    picked = Split(test.images[one], test.labels[one], test.image_ids(one))
    with _torch_threads(threads):
        return forward_euler_check(weights_at(weights, knobs, cfg), picked, cfg, samples=1, should_stop=should_stop)


@contextmanager
def _torch_threads(threads: int):
    """torch's intra-op threads for this block (torch's setting is per calling thread).

    A what-if's tensor ops are small (weights of 1000 x 1000, sums over
    [T, 9, n], FFTs of [T, 16]): on two OpenMP threads each op waits at a barrier
    for the other thread, which on a loaded machine costs the other thread's turn
    on a core, every op (a 1M-element sum took 0.3 ms on one thread and 23 ms on
    two with other processes holding the cores; a whole what-if 0.4 s against 1.5
    to 5 s)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _simulate(w: dict, events: InputEvents, cfg: Config, threads: int) -> dict:
    """What the analysis needs from the simulation of `events` (sample 0: the picked
    image), without the [T, B, n] spike trains: counts [B, n], logits, the E
    population's active fraction per step [T, B, 1] and, for sample 0, its spike
    events and I active fraction.

    On the CPU the compiled loop counts the spiking cells per step itself and keeps
    only sample 0's trains (`engine.fast.cpu.run_summary`, samples spread over
    `threads` threads that release the GIL), with the spikes of `simulate`'s
    loop; elsewhere `simulate` with trains, reduced here (`_reduced`)."""
    if cfg.torch_device.type == "cpu":
        return _summary_on_cpu(w, events, cfg, threads)
    out = simulate(w, events, cfg, spike_trains=True)
    reduced = _reduced(out)
    if out["s_e"].is_cuda:
        torch.cuda.synchronize()
    return reduced


def _summary_on_cpu(w: dict, events: InputEvents, cfg: Config, threads: int) -> dict:
    """`_simulate` through the compiled loop's summary mode: what engine.fast's
    simulate_fast does for the compiled loop, less the trains."""
    check_supported(cfg)
    steps, batch = events.shape[:2]
    p = fast_params(cfg, steps, batch, cfg.torch_device, cfg.torch_dtype)
    w_out = w["W_out"].clamp(min=0) if "W_out" in cfg.dale_weights else w["W_out"]  # Dale: as the reference
    out = run_summary(w["W_in"], recurrence(w["W_ei"], w["W_ie"]), input_events(events, p), batch, p, w_out,
                      trains_of=1, threads=threads)
    if p.variant.lif_readout:
        logits = lif_readout_logits(out.drive, network_params(cfg))
    else:  # linear: the time-mean of u from one filtered count, as simulate_fast
        logits = (out.filtered @ w_out) / steps
    population = out.population.double()
    return {"count_e": out.count_e, "count_i": out.count_i, "logits": logits,
            "active_e": population[:, :, :1] / cfg.n_e,
            "picked": {"raster_e": _events(out.s_e[:, 0]), "raster_i": _events(out.s_i[:, 0]),
                       "active_i": population[:, :1, 1:] / cfg.n_i}}


def _reduced(out: dict) -> dict:
    """`_simulate`'s answer from a simulation with trains."""
    s_e, s_i = out["s_e"], out["s_i"]
    return {"count_e": out["count_e"], "count_i": out["count_i"], "logits": out["logits"],
            "active_e": _active_fraction(s_e),
            "picked": {"raster_e": _events(s_e[:, 0]), "raster_i": _events(s_i[:, 0]),
                       "active_i": _active_fraction(s_i[:, :1])}}


def _events(spikes: torch.Tensor) -> Events:
    """One trial's spikes [T, n] as (step, cell) events in step order."""
    step, cell = spikes.nonzero(as_tuple=True)
    return Events(step.to(torch.int32).cpu().numpy(), cell.to(torch.int32).cpu().numpy())


def _analyse(out: dict, cfg: Config, test: Split, knobs: Knobs, index: torch.Tensor) -> dict:
    """WhatIfResult's fields from the reduced simulation of [the picked image, the N images]."""
    trial_s = cfg.n_steps * cfg.dt_ms / 1000.0
    n = len(index)
    labels = test.labels[index].to(out["logits"].device)
    predicted = out["logits"].argmax(-1)
    p = float((predicted[1:] == labels).double().mean())
    cell_e = (out["count_e"][1:].double().mean(0) / trial_s).cpu().numpy()
    cell_i = (out["count_i"][1:].double().mean(0) / trial_s).cpu().numpy()
    active_e, picked = out["active_e"], out["picked"]
    rate_e = population_rate(active_e[:, :1], cfg.dt_ms)[0].numpy()
    rate_i = population_rate(picked["active_i"], cfg.dt_ms)[0].numpy()
    try:
        spectrum = gamma_spectrum(active_e[:, 1:], cfg.dt_ms)
    except ValueError:  # a trial too short for a spectrum
        spectrum = None
    # a flat (silent) spectrum has no peak, as engine.analyses.measure.gamma_peak says
    peak = spectrum.peak_hz if spectrum is not None and spectrum.prominence > 0 else None
    return {
        "dt_ms": cfg.dt_ms, "t_ms": cfg.t_ms, "n_e": cfg.n_e, "n_i": cfg.n_i,
        "label": int(test.labels[knobs.sample]), "predicted": int(predicted[0]),
        "raster_e": picked["raster_e"], "raster_i": picked["raster_i"],
        "rate_time_ms": np.arange(len(rate_e)) + 0.5, "population_rate_e_hz": rate_e, "population_rate_i_hz": rate_i,
        "n_images": n, "rate_e_hz": float(cell_e.mean()), "rate_i_hz": float(cell_i.mean()),
        "cell_rates_e_hz": cell_e, "cell_rates_i_hz": cell_i,
        "accuracy_pct": 100.0 * p, "accuracy_stderr_pct": 100.0 * math.sqrt(p * (1.0 - p) / n),
        "accuracy_ci95_pct": wilson_interval_pct(int(round(p * n)), n),
        "spectrum": spectrum, "gamma_peak_hz": peak}


def wilson_interval_pct(correct: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95 % Wilson score interval of an accuracy, in percent. On 16 images the
    standard error says nothing at 16 of 16 correct (it is 0); this says 80.6-100 %."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return 100.0 * max(0.0, centre - half), 100.0 * min(1.0, centre + half)


def _active_fraction(spikes: torch.Tensor) -> torch.Tensor:
    """Spikes [T, B, n] -> the share of the population that spiked, [T, B, 1] float64 on the CPU.

    The population rate and its spectrum (engine.analyses.spectrum) average over
    cells; averaging once here, before they bin, lets them work on [T, B, 1]
    instead of converting every spike of [T, B, n] to float64 (a count of at most
    n is exact in float32)."""
    return (spikes.sum(-1, keepdim=True).cpu().double() / spikes.shape[-1])


def rate_histogram(rates: np.ndarray, bins: int = HISTOGRAM_BINS) -> tuple[list[float], list[int]]:
    """Bin edges and counts of per-cell rates (edges span [min, max], or [r, r + 1] when all equal)."""
    rates = np.asarray(rates, dtype=float)
    low, high = (float(rates.min()), float(rates.max())) if rates.size else (0.0, 1.0)
    counts, edges = np.histogram(rates, np.linspace(low, high if high > low else low + 1.0, bins + 1))
    return edges.tolist(), counts.tolist()


KNOB_NAMES = tuple(f.name for f in fields(Knobs))
