"""Coupling sweep (MODEL.md "Analyses"): scale trained W_ei by a column factor and
W_ie by a row factor, run the test images, record rates and accuracy per cell."""

from __future__ import annotations

from typing import Any, Callable

from engine.config import Config
from engine.data import Split
from engine.evaluate import evaluate
from engine.stability import UNSTABLE_STEP_FACTOR, forward_euler_check
from engine.weights import Weights

DEFAULT_FACTORS = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 6.0, 8.0, 10.0)

CellCallback = Callable[[dict[str, Any]], None]


def scaled_weights(weights: Weights, ei_factor: float, ie_factor: float) -> Weights:
    return {**weights, "W_ei": weights["W_ei"] * ei_factor, "W_ie": weights["W_ie"] * ie_factor}


def coupling_sweep(weights: Weights, config: Config, split: Split, factors=DEFAULT_FACTORS,
                   on_cell: CellCallback | None = None, done: list[dict[str, Any]] = ()) -> list[dict[str, Any]]:
    """One cell per (ei_factor, ie_factor); every cell sees the same input spikes,
    so differences between cells come from the coupling alone. The trained point
    is (1, 1); the diagonal (equal factors) is the study's line chart.

    Under forward Euler each cell also says whether the integrator stayed in its
    stable range (engine.stability, on the split's first images): `euler_step_max`
    is the largest dt g_tot / C, and at 2 or more the cell's rates are numerical.

    Cells in `done` (a stopped sweep's) are taken as they are, not run again nor reported."""
    cells = []
    finished = {(c["ei_factor"], c["ie_factor"]): c for c in done}
    for ie_factor in factors:
        for ei_factor in factors:
            if (ei_factor, ie_factor) in finished:
                cells.append(finished[(ei_factor, ie_factor)])
                continue
            scaled = scaled_weights(weights, ei_factor, ie_factor)
            result = evaluate(scaled, split, config)
            check = forward_euler_check(scaled, split, config)
            cell = {
                "ei_factor": ei_factor, "ie_factor": ie_factor,
                "rate_e_hz": result.rate_e_hz, "rate_i_hz": result.rate_i_hz,
                "rate_total_hz": result.rate_e_hz + result.rate_i_hz,
                "test_acc": result.accuracy_pct,
                "euler_step_max": check.step_factor_max if check else None,
                "euler_unstable_share": check.unstable_share if check else None,
            }
            cells.append(cell)
            if on_cell:
                on_cell(cell)
    return cells


def unstable_cells(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells where forward Euler left its stable range (dt g_tot / C >= 2)."""
    return [c for c in cells if (c.get("euler_step_max") or 0.0) >= UNSTABLE_STEP_FACTOR]


def diagonal(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells with equal factors (s = ei = ie), by s: the study's line chart."""
    return sorted((dict(c, scale=c["ei_factor"]) for c in cells if c["ei_factor"] == c["ie_factor"]),
                  key=lambda c: c["scale"])
