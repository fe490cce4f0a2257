"""Named inference analyses that run on a finished run's folder.

`run_analysis(name, source_run, params, out_dir, ...)` is the one entry point that
jobs and the CLI call. Each analysis validates its parameters once
(`ANALYSES[name].validate`), and its result, a JSON-serialisable dict, is
rewritten to `out_dir/result.json` as units of work complete, so readers can
show partial results (the coupling heatmap fills in cell by cell).

Every result has the same outer shape: `name`, `samples` (test images used),
`cells` (a list of flat records, one per unit of work: a grid cell, a scale, a
dt, a batch), `total` (units in all), an optional `summary` (figures derived
from the cells), then `params` and `complete` added here. Each module's
docstring defines its cells.

A stopped analysis (a server restart, a cancel and retry) resumes where it stopped
if it is `resumable`: run again into the same folder with the same parameters on the
same weights, its execute gets `resume`, what the stopped attempt reported last (its
partial result and the state it saved beside it), and skips the units done. Each
unit's input spikes and random draws are keyed on the unit, so a resumed result is
the one an uninterrupted run gives.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from engine.analyses import dt_audit, fi_curve, gamma, loop_transfer, perturb, phase_shuffle
from engine.analyses.coupling import DEFAULT_FACTORS, coupling_sweep, diagonal, unstable_cells
from engine.analyses.params import COMMON_DEFAULTS, AnalysisError, common, number_list, resumed_cells
from engine.inspect import LoadedRun, load_run_at, test_subset
from engine.reference import network_params
from engine.stability import CHECK_SAMPLES, UNSTABLE_STEP_FACTOR

__all__ = ["ANALYSES", "AnalysisCancelled", "AnalysisError", "AnalysisSpec", "run_analysis"]


class AnalysisCancelled(Exception):
    """`should_stop` asked the analysis to stop; the partial result stays on disk."""


@dataclass(frozen=True)
class AnalysisSpec:
    name: str
    description: str
    defaults: dict[str, Any]
    check: Callable[[dict], dict]
    execute: Callable[..., dict]
    resumable: bool = False  # execute takes resume= (see the module docstring)

    def validate(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise AnalysisError(unknown[0], f"is not a parameter of {self.name}")
        return self.check({**self.defaults, **params})


def _check_coupling(params: dict) -> dict:
    return {**common(params), "factors": number_list(params, "factors", 0.0, 100.0, 20)}


def _run_coupling(source: LoadedRun, params: dict, report: Callable[..., None], resume: dict | None = None) -> dict:
    config, weights = source
    split = test_subset(config, params["samples"])
    done = resumed_cells(resume)
    integrator = network_params(config).e.integrator
    result = {"name": "coupling_sweep", "factors": params["factors"], "samples": len(split.labels),
              "cells": [], "total": len(params["factors"]) ** 2,
              # what each cell's euler_* fields mean (None: the integrator is stable at any h)
              "euler_check": {"integrator": integrator, "unstable_at": UNSTABLE_STEP_FACTOR,
                              "samples": min(CHECK_SAMPLES, len(split.labels))
                              if integrator == "forward_euler" else 0}}

    def summarise() -> None:
        result["summary"] = {"diagonal": diagonal(result["cells"]),
                             "euler_unstable_cells": len(unstable_cells(result["cells"]))}

    def on_cell(cell: dict) -> None:
        result["cells"].append(cell)
        summarise()
        report(result)

    result["cells"] = list(done)
    summarise()  # a resume with every cell done reports none: its summary is the stopped attempt's cells'
    coupling_sweep(weights, config, split, params["factors"], on_cell, done=done)
    return result


ANALYSES: dict[str, AnalysisSpec] = {
    "coupling_sweep": AnalysisSpec(
        name="coupling_sweep",
        description="W_ei x W_ie multipliers on a trained run: E, I, total rate and accuracy per cell",
        defaults={"factors": list(DEFAULT_FACTORS), **COMMON_DEFAULTS},
        check=_check_coupling,
        execute=_run_coupling,
        resumable=True,
    ),
    "rate_vs_gamma": AnalysisSpec(
        name="rate_vs_gamma",
        description="nb041: GABA decay scaled on a trained run: E rate against gamma peak, affine fit",
        defaults=gamma.DEFAULTS, check=gamma.check, execute=gamma.run, resumable=True),
    "phase_shuffle": AnalysisSpec(
        name="phase_shuffle",
        description="nb042: I->E inhibition time-shuffled (same mean): the E-rate release factor",
        defaults=phase_shuffle.DEFAULTS, check=phase_shuffle.check, execute=phase_shuffle.run,
        resumable=True),
    "drop_add_spikes": AnalysisSpec(
        name="drop_add_spikes",
        description="nb037: drop or add E spikes inside the loop: accuracy, rates, does the cycle survive",
        defaults=perturb.DEFAULTS, check=perturb.check, execute=perturb.run, resumable=True),
    "fi_curve": AnalysisSpec(
        name="fi_curve",
        description="nb038: E and I rates against input-rate scale, I->E cut (open) and intact (closed)",
        defaults=fi_curve.DEFAULTS, check=fi_curve.check, execute=fi_curve.run, resumable=True),
    "loop_transfer": AnalysisSpec(
        name="loop_transfer",
        description="nb038: a fresh E->I->E loop installed at test time (0..1 x the PING strengths) "
                    "in a trained run: accuracy, rates, where I is recruited and a rhythm appears",
        defaults=loop_transfer.DEFAULTS, check=loop_transfer.check, execute=loop_transfer.run, resumable=True),
    "dt_audit": AnalysisSpec(
        name="dt_audit",
        description="nb044: a trained run evaluated at dt 0.05 / 0.1 / 0.25 / 0.5 ms: rates, accuracy, cycle",
        defaults=dt_audit.DEFAULTS, check=dt_audit.check, execute=dt_audit.run, resumable=True),
}


def run_analysis(name: str, source_run: str | Path, params: dict[str, Any] | None, out_dir: str | Path, *,
                 on_progress: Callable[[int, int], None] | None = None,
                 should_stop: Callable[[], bool] | None = None) -> dict[str, Any]:
    if name not in ANALYSES:
        raise AnalysisError("name", f"must be one of {sorted(ANALYSES)}, got {name!r}")
    spec = ANALYSES[name]
    params = spec.validate(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # a run's latest checkpoint moves on while it trains: say which epoch was analysed,
    # from the same read as the weights (two reads could straddle an epoch's end)
    config, weights, epoch = load_run_at(source_run, params["weights"])
    if params.get("weights") == "last" and spec.resumable:
        weights, epoch = _pinned_weights(out, name, params, weights, epoch)
    provenance = {"weights_epoch": epoch} if params.get("weights") == "last" else {}

    def report(partial: dict, state: Any = None) -> None:
        """Write the partial result (and the state a resume needs, first: a result on disk
        always has its state beside it); progress; stop here if asked."""
        if state is not None:
            tmp = out / (RESUME_STATE + ".tmp")
            torch.save(state, tmp)
            os.replace(tmp, out / RESUME_STATE)
        _write_json(out / "result.json", {**partial, "params": params, **provenance, "complete": False})
        done = partial.get("done", len(partial["cells"]))
        if on_progress:
            on_progress(done, partial["total"])
        if should_stop and should_stop():
            raise AnalysisCancelled(f"{name} stopped after {done} of {partial['total']} units")

    resume = _stopped_attempt(out, name, params, provenance) if spec.resumable else None
    extra = {"resume": resume} if spec.resumable else {}
    result = {**spec.execute((config, weights), params, report, **extra), "params": params, **provenance,
              "complete": True}
    _write_json(out / "result.json", result)
    (out / RESUME_STATE).unlink(missing_ok=True)
    (out / PINNED_WEIGHTS).unlink(missing_ok=True)
    return result


RESUME_STATE = "resume_state.pt"
# The `last` checkpoint an unfinished analysis started on. The run may train on while the
# analysis is stopped (nb037 on a 100-epoch run spans server restarts); its resume goes on
# with the weights it began with, or it could never finish while the run trains.
PINNED_WEIGHTS = "analysed_weights.pt"


def _pinned_weights(out: Path, name: str, params: dict, latest: dict, epoch: int | None):
    """The weights and epoch a stopped attempt of this analysis pinned, if it left cells to go
    on from; else pin the latest checkpoint's (they stay until the analysis completes)."""
    pinned = out / PINNED_WEIGHTS
    if pinned.exists():
        saved = torch.load(pinned, map_location="cpu", weights_only=True)
        if _stopped_result(out, name, params, {"weights_epoch": saved["epoch"]}) is not None:
            device, dtype = next(iter(latest.values())).device, next(iter(latest.values())).dtype
            return {k: v.to(device, dtype) for k, v in saved["weights"].items()}, saved["epoch"]
    tmp = out / (PINNED_WEIGHTS + ".tmp")
    torch.save({"weights": {k: v.cpu() for k, v in latest.items()}, "epoch": epoch}, tmp)
    os.replace(tmp, pinned)
    return latest, epoch


def _stopped_attempt(out: Path, name: str, params: dict, provenance: dict) -> dict | None:
    """What an unfinished attempt of this analysis left in `out`: {"result": its partial result,
    "state": what it saved with it (None if nothing)}; None when there is nothing to resume."""
    partial = _stopped_result(out, name, params, provenance)
    if partial is None:
        return None
    state_path = out / RESUME_STATE
    return {"result": partial, "state": torch.load(state_path) if state_path.exists() else None}


def _stopped_result(out: Path, name: str, params: dict, provenance: dict) -> dict | None:
    """The partial result an unfinished attempt left in `out`; None if there is none, it is
    finished or empty, or it is another analysis, other parameters or other weights."""
    try:
        partial = json.loads((out / "result.json").read_text())
    except (OSError, json.JSONDecodeError):
        return None
    same = (partial.get("name") == name and partial.get("params") == json.loads(json.dumps(params))
            and partial.get("weights_epoch") == provenance.get("weights_epoch"))
    return partial if same and not partial.get("complete") and partial.get("cells") else None


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
