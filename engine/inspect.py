"""Inference on a stored run: load its config and weights, run test images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.analyses.coupling import scaled_weights
from engine.analyses.spectrum import gamma_spectrum, population_rate
from engine.config import Config
from engine.data import Split, load_tier
from engine.evaluate import evaluate
from engine.rundir import RunDir
from engine.weights import Weights


# a run's config and the weights an analysis runs on (registry.run_analysis loads them once)
LoadedRun = tuple[Config, Weights]


def load_run(run_dir: str | Path, weights: str = "final") -> tuple[Config, Weights]:
    """The run's config and its `final`, `init` or `last` (checkpoint) weights."""
    run, config = _run_folder(run_dir)
    return config, _on_device(run.load_weights(weights), config)


def load_run_at(run_dir: str | Path, weights: str = "final") -> tuple[Config, Weights, int | None]:
    """`load_run` and the epoch the weights are from (RunDir.load_weights_at)."""
    run, config = _run_folder(run_dir)
    loaded, epoch = run.load_weights_at(weights)
    return config, _on_device(loaded, config), epoch


def _run_folder(run_dir: str | Path) -> tuple[RunDir, Config]:
    run = RunDir(run_dir)
    if not run.config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    return run, run.read_config()


def _on_device(loaded: dict, config: Config) -> Weights:
    return {k: v.to(config.torch_device, config.torch_dtype) for k, v in loaded.items()}


def test_subset(config: Config, samples: int | None = None) -> Split:
    test = load_tier(config.tier).test
    if samples is None or samples >= len(test.labels):
        return test
    # an even spread over the (label-sorted) test set keeps every class in a subset
    index = torch.linspace(0, len(test.labels) - 1, samples).round().long()
    return Split(test.images[index], test.labels[index], index)


def simulate_run(run_dir: str | Path, weights: str = "final", samples: int | None = None) -> dict[str, Any]:
    """Accuracy, rates and gamma spectrum of a run's weights on its test images."""
    config, w = load_run(run_dir, weights)
    split = test_subset(config, samples)
    result = evaluate(w, split, config, keep_spikes=8)
    try:
        spectrum = gamma_spectrum(result.spikes_e, config.dt_ms)
        peak = {"gamma_peak_hz": spectrum.peak_hz, "gamma_prominence": spectrum.prominence}
    except ValueError:  # a trial too short for a spectrum
        peak = {"gamma_peak_hz": None, "gamma_prominence": None}
    return {
        "run": str(run_dir), "weights": weights, "samples": len(split.labels),
        "test_acc": result.accuracy_pct, "test_loss": result.loss,
        "rate_e_hz": result.rate_e_hz, "rate_i_hz": result.rate_i_hz,
        "active_frac_e": result.active_frac_e, "active_frac_i": result.active_frac_i,
        **peak,
    }


def spike_raster(run_dir: str | Path, sample: int = 0, weights: str = "final",
                 ei_factor: float = 1.0, ie_factor: float = 1.0) -> dict[str, Any]:
    """One test image through a run's network on the CPU (W_ei, W_ie optionally
    scaled as in the coupling sweep): E and I spike times, the E population rate in 1 ms bins
    and its spectrum. Plain lists, ready for JSON or a plot."""
    config, w = load_run(run_dir, weights)
    # one image is cheap on a CPU, and a server process should not hold a GPU context
    config = config.replace(device="cpu")
    w = {k: v.cpu() for k, v in w.items()}
    test = load_tier(config.tier).test
    if not 0 <= sample < len(test.labels):
        raise IndexError(f"sample must be in [0, {len(test.labels) - 1}], got {sample}")
    one = Split(test.images[sample:sample + 1], test.labels[sample:sample + 1], torch.tensor([sample]))
    result = evaluate(scaled_weights(w, ei_factor, ie_factor), one, config, keep_spikes=1)
    e_steps, e_cells = result.spikes_e[:, 0].nonzero(as_tuple=True)
    i_steps, i_cells = result.spikes_i[:, 0].nonzero(as_tuple=True)
    rate = population_rate(result.spikes_e, config.dt_ms)[0]
    try:
        spectrum = gamma_spectrum(result.spikes_e, config.dt_ms).to_dict()
    except ValueError:  # a trial too short for a spectrum
        spectrum = None
    return {
        "sample": sample, "label": int(test.labels[sample]), "t_ms": config.t_ms,
        "n_e": config.n_e, "n_i": config.n_i, "ei_factor": ei_factor, "ie_factor": ie_factor,
        "correct": result.accuracy_pct == 100.0,
        "rate_e_hz": result.rate_e_hz, "rate_i_hz": result.rate_i_hz,
        "e_times_ms": (e_steps.double() * config.dt_ms).tolist(), "e_cells": e_cells.tolist(),
        "i_times_ms": (i_steps.double() * config.dt_ms).tolist(), "i_cells": i_cells.tolist(),
        "rate_time_ms": [float(t) + 0.5 for t in range(rate.shape[0])],
        "population_rate_hz": rate.tolist(),
        "spectrum": spectrum,
    }
