"""Rate against gamma frequency (nb041), inference version.

The seed retrains PING at several settings and fits E rate against the gamma
frequency across the trained runs (the `nb041` study preset does that, with this
analysis at scale 1 on each run). On one trained run this analysis moves the
gamma frequency the direct way, by scaling the GABA decay time `tau_gaba_ms` (the
cycle is roughly the time for I->E inhibition to wear off), and records per
scale the E and I rates, accuracy and the E population's gamma peak (MODEL.md
"Gamma spectrum"). The summary is the least-squares affine fit
rate_e = intercept + slope * gamma_peak over the scales that have a peak.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from engine.analyses.measure import measure
from engine.analyses.params import COMMON_DEFAULTS, common, number_list, resumed_cells
from engine.config import Config
from engine.data import Split
from engine.inspect import LoadedRun, test_subset
from engine.weights import Weights

DEFAULTS = {"tau_gaba_scales": [0.5, 0.75, 1.0, 1.5, 2.0], **COMMON_DEFAULTS}


def check(params: dict) -> dict:
    return {**common(params), "tau_gaba_scales": number_list(params, "tau_gaba_scales", 0.05, 20.0, 20)}


def rate_vs_gamma(weights: Weights, config: Config, split: Split, scales: list[float],
                  on_cell: Callable[[dict], None], skip: int = 0) -> None:
    """One cell per scale, in order; the first `skip` (a stopped run's) are not run."""
    for scale in scales[skip:]:
        tau = config.tau_gaba_ms * scale
        cell = {"tau_gaba_scale": scale, "tau_gaba_ms": tau,
                **measure(weights, config.replace(tau_gaba_ms=tau), split)}
        on_cell(cell)


def affine_fit(xs: list[float | None], ys: list[float]) -> dict[str, Any] | None:
    """rate = intercept + slope * f over the points with an x; None below two distinct x."""
    points = [(x, y) for x, y in zip(xs, ys) if x is not None]
    if len({x for x, _ in points}) < 2:
        return None
    x = np.array([p[0] for p in points])
    y = np.array([p[1] for p in points])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (intercept + slope * x)
    total = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((residual ** 2).sum()) / total if total > 0 else None
    return {"slope_hz_per_hz": float(slope), "intercept_hz": float(intercept), "r2": r2, "points": len(points)}


def run(source: LoadedRun, params: dict, report: Callable[[dict], None], resume: dict | None = None) -> dict:
    config, weights = source
    split = test_subset(config, params["samples"])
    result = {"name": "rate_vs_gamma", "samples": len(split.labels), "cells": resumed_cells(resume),
              "total": len(params["tau_gaba_scales"])}

    def summarise() -> None:
        result["summary"] = {"fit": affine_fit([c["gamma_peak_hz"] for c in result["cells"]],
                                               [c["rate_e_hz"] for c in result["cells"]])}

    def on_cell(cell: dict) -> None:
        result["cells"].append(cell)
        summarise()
        report(result)

    summarise()
    rate_vs_gamma(weights, config, split, params["tau_gaba_scales"], on_cell, skip=len(result["cells"]))
    return result
