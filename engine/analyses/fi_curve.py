"""f-I curves (nb038): E and I rates against input strength, loop open and closed.

Input strength is the Poisson input rate: `max_rate_hz` times each scale (the
seed reads the recruitment cliff "in input-rate space"). Every scale draws
the same per-image generators (engine.encoding.test_input_events), but the spikes
of two scales are not nested: the sampler draws the gaps between spikes, and the
same uniforms give other gaps at another rate (issue 17's audit: at 2x rate, 7,631
of 7,702 spikes at 1x were not kept). "Open" cuts I->E (W_ie x 0): E runs
on its input alone while I still reports how hard E drives it; "closed" is the
trained network. The summary gives, per scale, the loop's E suppression (open /
closed E rate; None where the closed E rate is 0) and the recruitment cliff: the
input scale at which the closed loop's I rate first reaches `RECRUITED_I_HZ`,
linearly interpolated between the scales around it (None if I is recruited at the
smallest scale tried or never), and that position as an input rate (Hz per channel
at a white pixel). The seed's other nb038 probe, the inference-time loop transfer,
is engine.analyses.loop_transfer.
"""

from __future__ import annotations

from typing import Callable

from engine.analyses.measure import measure
from engine.analyses.params import COMMON_DEFAULTS, common, number_list, resumed_cells
from engine.config import Config
from engine.data import Split
from engine.inspect import LoadedRun, test_subset
from engine.weights import Weights

DEFAULTS = {"input_scales": [0.0, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0], **COMMON_DEFAULTS}
LOOPS = ("open", "closed")
RECRUITED_I_HZ = 1.0  # I at or above this rate is recruited (nb036's "I silent" bound)


def check(params: dict) -> dict:
    return {**common(params), "input_scales": sorted(number_list(params, "input_scales", 0.0, 50.0, 20))}


def loop_weights(weights: Weights, loop: str) -> Weights:
    return {**weights, "W_ie": weights["W_ie"] * 0.0} if loop == "open" else weights


def fi_curve(weights: Weights, config: Config, split: Split, scales: list[float],
             on_cell: Callable[[dict], None], skip: int = 0) -> None:
    """One cell per (loop, scale), in that order; the first `skip` (a stopped run's) are not run."""
    for loop, scale in [(loop, scale) for loop in LOOPS for scale in scales][skip:]:
        rate = config.max_rate_hz * scale
        on_cell({"loop": loop, "input_scale": scale, "input_rate_hz": rate,
                 **measure(loop_weights(weights, loop), config.replace(max_rate_hz=rate), split)})


def suppression(cells: list[dict]) -> list[dict]:
    by_key = {(c["loop"], c["input_scale"]): c for c in cells}
    rows = []
    for (loop, scale), closed in by_key.items():
        opened = by_key.get(("open", scale))
        if loop == "closed" and opened is not None:
            ratio = opened["rate_e_hz"] / closed["rate_e_hz"] if closed["rate_e_hz"] > 0 else None
            rows.append({"input_scale": scale, "open_over_closed_e": ratio})
    return rows


def recruitment_cliff(cells: list[dict], threshold_hz: float = RECRUITED_I_HZ) -> float | None:
    closed = sorted((c["input_scale"], c["rate_i_hz"]) for c in cells if c["loop"] == "closed")
    for (s0, r0), (s1, r1) in zip(closed, closed[1:]):
        if r0 < threshold_hz <= r1:
            return s0 + (s1 - s0) * (threshold_hz - r0) / (r1 - r0)
    return None


def run(source: LoadedRun, params: dict, report: Callable[[dict], None], resume: dict | None = None) -> dict:
    config, weights = source
    split = test_subset(config, params["samples"])
    result = {"name": "fi_curve", "samples": len(split.labels), "base_rate_hz": config.max_rate_hz,
              "cells": resumed_cells(resume), "total": len(LOOPS) * len(params["input_scales"])}

    def summarise() -> None:
        result["summary"] = {"suppression": suppression(result["cells"]),
                             "recruitment_cliff_scale": (cliff := recruitment_cliff(result["cells"])),
                             "recruitment_cliff_input_rate_hz": None if cliff is None else cliff * config.max_rate_hz,
                             "recruited_i_hz": RECRUITED_I_HZ}

    def on_cell(cell: dict) -> None:
        result["cells"].append(cell)
        summarise()
        report(result)

    summarise()
    fi_curve(weights, config, split, params["input_scales"], on_cell, skip=len(result["cells"]))
    return result
