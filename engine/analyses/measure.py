"""One measurement used by several analyses: rates, accuracy and gamma peak of a
network (weights + config) on a test split."""

from __future__ import annotations

from typing import Any

from engine.analyses.spectrum import gamma_spectrum
from engine.config import Config
from engine.data import Split
from engine.evaluate import evaluate
from engine.weights import Weights

SPECTRUM_SAMPLES = 32  # spike trains kept for the spectrum (power is averaged over them)


def measure(weights: Weights, config: Config, split: Split) -> dict[str, Any]:
    """E, I and total rate (Hz), accuracy (%), and the E population's gamma peak
    (Hz) and prominence; peak and prominence are None for a trial too short for
    a spectrum, and the cycle period is None where there is no peak."""
    result = evaluate(weights, split, config, keep_spikes=SPECTRUM_SAMPLES)
    peak = gamma_peak(result.spikes_e, config.dt_ms)
    return {
        "rate_e_hz": result.rate_e_hz, "rate_i_hz": result.rate_i_hz,
        "rate_total_hz": result.rate_e_hz + result.rate_i_hz,
        "test_acc": result.accuracy_pct, **peak,
    }


def gamma_peak(spikes_e, dt_ms: float) -> dict[str, float | None]:
    try:
        spectrum = gamma_spectrum(spikes_e, dt_ms)
    except ValueError:  # trial too short for a spectrum
        return {"gamma_peak_hz": None, "gamma_prominence": None, "cycle_ms": None}
    silent = spectrum.prominence == 0.0  # a flat spectrum has no peak
    return {"gamma_peak_hz": None if silent else spectrum.peak_hz, "gamma_prominence": spectrum.prominence,
            "cycle_ms": None if silent else 1000.0 / spectrum.peak_hz}
