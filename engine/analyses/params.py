"""Parameter checks shared by the analyses: each names the offending field."""

from __future__ import annotations

from typing import Any


class AnalysisError(ValueError):
    """Bad analysis name or parameters; `field` names the offending parameter."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name} {message}")
        self.field = field_name
        self.message = message


def number_list(params: dict, key: str, low: float, high: float, max_len: int) -> list[float]:
    values = params[key]
    if not isinstance(values, list) or not 1 <= len(values) <= max_len:
        raise AnalysisError(key, f"must be a list of 1 to {max_len} numbers")
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not low <= v <= high:
            raise AnalysisError(key, f"entries must be numbers in [{low}, {high}], got {v!r}")
    return [float(v) for v in values]


def number(params: dict, key: str, low: float, high: float) -> float:
    value = params[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise AnalysisError(key, f"must be a number in [{low}, {high}], got {value!r}")
    return float(value)


def common(params: dict) -> dict[str, Any]:
    """`samples` (test images, None: all) and `weights` (final, init or last checkpoint)."""
    samples = params["samples"]
    if samples is not None and (isinstance(samples, bool) or not isinstance(samples, int) or samples < 1):
        raise AnalysisError("samples", f"must be a positive integer or null, got {samples!r}")
    if params["weights"] not in ("final", "init", "last"):
        raise AnalysisError("weights", f"must be 'final', 'init' or 'last', got {params['weights']!r}")
    return {"samples": samples, "weights": params["weights"]}


COMMON_DEFAULTS = {"samples": None, "weights": "final"}


def resumed_cells(resume: dict | None) -> list[dict]:
    """The cells a stopped attempt finished, in their order (registry.run_analysis's `resume`:
    an analysis whose cells come in a fixed order skips that many and goes on)."""
    return list(resume["result"]["cells"]) if resume else []
