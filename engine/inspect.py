"""Inference on a stored run: load its config and weights, run test images."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from engine.analyses.spectrum import gamma_spectrum
from engine.config import Config
from engine.data import Split, load_tier
from engine.evaluate import evaluate
from engine.rundir import RunDir
from engine.weights import Weights


def load_run(run_dir: str | Path, weights: str = "final") -> tuple[Config, Weights]:
    """The run's config and its `final`, `init` or `last` (checkpoint) weights."""
    run = RunDir(run_dir)
    if not run.config_path.exists():
        raise FileNotFoundError(f"{run_dir} is not a run folder (no config.json)")
    config = run.read_config()
    loaded = run.load_weights(weights)
    return config, {k: v.to(config.torch_device, config.torch_dtype) for k, v in loaded.items()}


def test_subset(config: Config, samples: int | None = None) -> Split:
    test = load_tier(config.tier).test
    if samples is None or samples >= len(test.labels):
        return test
    # an even spread over the (label-sorted) test set keeps every class in a subset
    index = torch.linspace(0, len(test.labels) - 1, samples).round().long()
    return Split(test.images[index], test.labels[index])


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
