"""dt audit (nb044), inference version: a trained run's weights evaluated at
several integration steps. Per dt: E and I rates, accuracy, gamma peak and
cycle period (1000 / peak, ms). The refractory periods are rounded to whole
steps of each dt (MODEL.md "Step conventions"), and the Poisson input is drawn
per step, so the input spikes differ between dts; only their rate is the same.
The training version (the `nb044` preset) trains one run per dt and runs this
on each.
"""

from __future__ import annotations

from typing import Callable

from engine.analyses.measure import measure
from engine.analyses.params import COMMON_DEFAULTS, AnalysisError, common, number_list, resumed_cells
from engine.config import Config
from engine.data import Split
from engine.inspect import LoadedRun, test_subset
from engine.weights import Weights

DEFAULTS = {"dts_ms": [0.05, 0.1, 0.25, 0.5], **COMMON_DEFAULTS}


def check(params: dict) -> dict:
    dts = number_list(params, "dts_ms", 0.001, 5.0, 10)
    if len(set(dts)) != len(dts):
        raise AnalysisError("dts_ms", f"has repeated values: {dts}")
    return {**common(params), "dts_ms": dts}


def dt_audit(weights: Weights, config: Config, split: Split, dts_ms: list[float],
             on_cell: Callable[[dict], None], skip: int = 0) -> None:
    """One cell per dt, in order; the first `skip` (a stopped run's) are not run."""
    for dt in dts_ms[skip:]:
        at_dt = config.replace(dt_ms=dt)
        on_cell({"dt_ms": dt, "steps": at_dt.n_steps, "trained_dt_ms": config.dt_ms,
                 **measure(weights, at_dt, split)})


def run(source: LoadedRun, params: dict, report: Callable[[dict], None], resume: dict | None = None) -> dict:
    config, weights = source
    split = test_subset(config, params["samples"])
    result = {"name": "dt_audit", "samples": len(split.labels), "trained_dt_ms": config.dt_ms,
              "cells": resumed_cells(resume), "total": len(params["dts_ms"])}

    def on_cell(cell: dict) -> None:
        result["cells"].append(cell)
        report(result)

    dt_audit(weights, config, split, params["dts_ms"], on_cell, skip=len(result["cells"]))
    return result
