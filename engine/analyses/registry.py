"""Named inference analyses that run on a finished run's folder.

`run_analysis(name, source_run, params, out_dir, ...)` is the one entry point that
jobs and the CLI call. Each analysis validates its parameters once
(`ANALYSES[name].validate`), and its result, a JSON-serialisable dict, is
rewritten to `out_dir/result.json` as units of work complete, so readers can
show partial results (the coupling heatmap fills in cell by cell).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from engine.analyses.coupling import DEFAULT_FACTORS, coupling_sweep
from engine.inspect import load_run, test_subset


class AnalysisError(ValueError):
    """Bad analysis name or parameters; `field` names the offending parameter."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name} {message}")
        self.field = field_name
        self.message = message


class AnalysisCancelled(Exception):
    """`should_stop` asked the analysis to stop; the partial result stays on disk."""


def _number_list(params: dict, key: str, low: float, high: float, max_len: int) -> list[float]:
    values = params[key]
    if not isinstance(values, list) or not 1 <= len(values) <= max_len:
        raise AnalysisError(key, f"must be a list of 1 to {max_len} numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise AnalysisError(key, f"entries must be numbers in [{low}, {high}], got {v!r}")
    return [float(v) for v in values]


def _common(params: dict) -> dict:
    samples = params["samples"]
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise AnalysisError("samples", f"must be a positive integer or null, got {samples!r}")
    if params["weights"] not in ("final", "init", "last"):
        raise AnalysisError("weights", f"must be 'final', 'init' or 'last', got {params['weights']!r}")
    return {"samples": samples, "weights": params["weights"]}


@dataclass(frozen=True)
class AnalysisSpec:
    name: str
    description: str
    defaults: dict[str, Any]
    check: Callable[[dict], dict]
    execute: Callable[..., dict]

    def validate(self, params: dict[str, Any] | None) -> dict[str, Any]:
        params = dict(params or {})
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise AnalysisError(unknown[0], f"is not a parameter of {self.name}")
        return self.check({**self.defaults, **params})


def _check_coupling(params: dict) -> dict:
    return {**_common(params), "factors": _number_list(params, "factors", 0.0, 100.0, 20)}


def _run_coupling(source_run: Path, params: dict, report: Callable[[dict], None]) -> dict:
    config, weights = load_run(source_run, params["weights"])
    split = test_subset(config, params["samples"])
    result = {"name": "coupling_sweep", "factors": params["factors"], "samples": len(split.labels),
              "cells": [], "total": len(params["factors"]) ** 2}

    def on_cell(cell: dict) -> None:
        result["cells"].append(cell)
        report(result)

    coupling_sweep(weights, config, split, params["factors"], on_cell)
    return result


ANALYSES: dict[str, AnalysisSpec] = {
    "coupling_sweep": AnalysisSpec(
        name="coupling_sweep",
        description="W_ei x W_ie multipliers on a trained run: E, I, total rate and accuracy per cell",
        defaults={"factors": list(DEFAULT_FACTORS), "samples": None, "weights": "final"},
        check=_check_coupling,
        execute=_run_coupling,
    ),
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

    def report(partial: dict) -> None:
        _write_json(out / "result.json", {**partial, "params": params, "complete": False})
        if on_progress:
            on_progress(len(partial["cells"]), partial["total"])
        if should_stop and should_stop():
            raise AnalysisCancelled(f"{name} stopped after {len(partial['cells'])} of {partial['total']} cells")

    result = {**spec.execute(Path(source_run), params, report), "params": params, "complete": True}
    _write_json(out / "result.json", result)
    return result


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
