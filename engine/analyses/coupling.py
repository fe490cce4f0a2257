"""Coupling sweep (MODEL.md "Analyses"): scale trained W_ei by a column factor and
W_ie by a row factor, run the test images, record rates and accuracy per cell."""

from __future__ import annotations

from typing import Any, Callable

from engine.config import Config
from engine.data import Split
from engine.evaluate import evaluate
from engine.weights import Weights

DEFAULT_FACTORS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0)

CellCallback = Callable[[dict[str, Any]], None]


def scaled_weights(weights: Weights, ei_factor: float, ie_factor: float) -> Weights:
    return {**weights, "W_ei": weights["W_ei"] * ei_factor, "W_ie": weights["W_ie"] * ie_factor}


def coupling_sweep(weights: Weights, config: Config, split: Split, factors=DEFAULT_FACTORS,
                   on_cell: CellCallback | None = None) -> list[dict[str, Any]]:
    """One cell per (ei_factor, ie_factor); every cell sees the same input spikes,
    so differences between cells come from the coupling alone. The trained point
    is (1, 1); the diagonal (equal factors) is the study's line chart."""
    cells = []
    for ie_factor in factors:
        for ei_factor in factors:
            result = evaluate(scaled_weights(weights, ei_factor, ie_factor), split, config)
            cell = {
                "ei_factor": ei_factor, "ie_factor": ie_factor,
                "rate_e_hz": result.rate_e_hz, "rate_i_hz": result.rate_i_hz,
                "rate_total_hz": result.rate_e_hz + result.rate_i_hz,
                "test_acc": result.accuracy_pct,
            }
            cells.append(cell)
            if on_cell:
                on_cell(cell)
    return cells


def diagonal(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells with equal factors (s = ei = ie), by s: the study's line chart."""
    return sorted((dict(c, scale=c["ei_factor"]) for c in cells if c["ei_factor"] == c["ie_factor"]),
                  key=lambda c: c["scale"])
