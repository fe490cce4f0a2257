"""Inference-time loop transfer (nb038): give a trained network a fresh E->I->E loop.

The seed's nb038 takes the trained COBA network (no loop), keeps its trained W_in
and W_out, installs a freshly drawn I loop at test time at increasing strength,
and watches the gamma cycle assemble: accuracy, E and I rates per strength
(pinglab nb038.py `run_ei_sweep`: ei_strength 0, 0.1, .., 1 with W_ie at the
fixed ratio 2 x ei_strength, i.e. both edges scaled together up to the PING
recipe's loop).

Here the strength is a `loop_scale` s: W_ei and W_ie are drawn by `init_weights`
with the run's seed at s times the PING strengths of the run's recipe (canonical:
ei 0.05, ie 1; seed: ei 1, ie 2), so s = 1 is exactly the fixed loop a PING run of
that seed trains with and s = 0 is no loop. On a PING source run the sweep
replaces its loop the same way (s = 1 gives it back if it trained at the recipe's
default strengths with its loop fixed).

Per scale a cell: rates, accuracy and the E population's gamma peak and
prominence. The summary reads the sweep as the seed does: the accuracy at s = 0
(the network as trained, for a COBA source), the worst accuracy and its drop from
there, the E rate at the strongest loop over the E rate at s = 0 (how far the
transferred loop holds E down), the smallest scale at which I is recruited (I at
or above `RECRUITED_I_HZ`, linearly interpolated between the scales around it) and
the smallest scale at which a rhythm shows (prominence at or above
`RHYTHM_PROMINENCE`, nb036's PING bound).
"""

from __future__ import annotations

from typing import Callable

from engine.analyses.fi_curve import RECRUITED_I_HZ
from engine.analyses.measure import measure
from engine.analyses.params import COMMON_DEFAULTS, common, number_list, resumed_cells
from engine.config import Config
from engine.data import Split
from engine.inspect import LoadedRun, test_subset
from engine.weights import Weights, init_weights

DEFAULTS = {"loop_scales": [round(0.1 * i, 1) for i in range(11)], **COMMON_DEFAULTS}  # the seed's 0..1
RHYTHM_PROMINENCE = 4.0  # gamma peak / median power: a rhythm (engine.studies.report.PING_PROMINENCE)


def check(params: dict) -> dict:
    return {**common(params), "loop_scales": sorted(number_list(params, "loop_scales", 0.0, 10.0, 21))}


def ping_strengths(config: Config) -> tuple[float, float]:
    """(ei_strength, ie_strength) of a PING run in `config`'s recipe."""
    ping = Config(recipe=config.recipe, arch="ping")
    return float(ping.ei_strength), float(ping.ie_strength)


def transferred(weights: Weights, config: Config, scale: float) -> tuple[Weights, Config]:
    """The trained W_in and W_out with a fresh loop at `scale` x the PING strengths."""
    ei, ie = ping_strengths(config)
    loop_config = config.replace(arch="ping", ei_strength=scale * ei, ie_strength=scale * ie)
    fresh = init_weights(loop_config)
    like = weights["W_in"]
    return ({**weights, "W_ei": fresh["W_ei"].to(like.device, like.dtype),
             "W_ie": fresh["W_ie"].to(like.device, like.dtype)}, loop_config)


def loop_transfer(weights: Weights, config: Config, split: Split, scales: list[float],
                  on_cell: Callable[[dict], None], skip: int = 0) -> None:
    """One cell per scale, in order; the first `skip` (a stopped run's) are not run."""
    ei, ie = ping_strengths(config)
    for scale in scales[skip:]:
        w, loop_config = transferred(weights, config, scale)
        on_cell({"loop_scale": scale, "ei_strength": scale * ei, "ie_strength": scale * ie,
                 **measure(w, loop_config, split)})


def first_crossing(points: list[tuple[float, float]], threshold: float) -> float | None:
    """The x at which y first reaches `threshold` going up, linearly interpolated
    between the two points around it; None if y is there at the first point or never."""
    points = sorted(points)
    for (x0, y0), (x1, y1) in zip(points, points[1:]):
        if y0 < threshold <= y1:
            return x0 + (x1 - x0) * (threshold - y0) / (y1 - y0)
    return None


def summarise(cells: list[dict]) -> dict:
    cells = sorted(cells, key=lambda c: c["loop_scale"])
    base = cells[0] if cells and cells[0]["loop_scale"] == 0.0 else None
    worst = min(cells, key=lambda c: c["test_acc"]) if cells else None
    rhythmic = [c["loop_scale"] for c in cells if (c["gamma_prominence"] or 0.0) >= RHYTHM_PROMINENCE]
    strongest = cells[-1] if cells else None
    return {
        "acc_no_loop": base and base["test_acc"],
        "worst_acc": worst and worst["test_acc"], "worst_acc_scale": worst and worst["loop_scale"],
        "worst_acc_drop_pp": base["test_acc"] - worst["test_acc"] if base else None,
        "e_rate_ratio_strongest": (strongest["rate_e_hz"] / base["rate_e_hz"]
                                   if base and strongest is not base and base["rate_e_hz"] > 0 else None),
        "i_recruited_scale": first_crossing([(c["loop_scale"], c["rate_i_hz"]) for c in cells], RECRUITED_I_HZ),
        "rhythm_scale": rhythmic[0] if rhythmic else None,
        "recruited_i_hz": RECRUITED_I_HZ, "rhythm_prominence": RHYTHM_PROMINENCE,
    }


def run(source: LoadedRun, params: dict, report: Callable[[dict], None], resume: dict | None = None) -> dict:
    config, weights = source
    split = test_subset(config, params["samples"])
    ei, ie = ping_strengths(config)
    cells = resumed_cells(resume)
    result = {"name": "loop_transfer", "samples": len(split.labels), "source_arch": config.arch,
              "ping_ei_strength": ei, "ping_ie_strength": ie, "cells": cells,
              "total": len(params["loop_scales"]), "summary": summarise(cells)}

    def on_cell(cell: dict) -> None:
        result["cells"].append(cell)
        result["summary"] = summarise(result["cells"])
        report(result)

    loop_transfer(weights, config, split, params["loop_scales"], on_cell, skip=len(cells))
    return result
