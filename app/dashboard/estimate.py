"""How long a study's training takes on this server, from epochs it has measured.

An epoch simulates every image of its tier (train and test) for the trial's steps
over all cells, so its time is close to proportional to images x steps x cells on
a given backend and machine. The calibration is the median, over recent training
runs, of the last epoch's `epoch_s` per such unit (the last epoch: the first one
also loads data and compiles), kept per backend since fast and reference differ
by 10-30x.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any, Iterable

from engine.data import TIER_SIZES
from engine.force.config import ForceConfig

RECENT_RUNS = 20


def work_units(config: dict[str, Any]) -> float:
    """Images per epoch x time steps x cells: what an epoch's time scales with."""
    steps = float(config["t_ms"]) / float(config["dt_ms"])
    return TIER_SIZES[config["tier"]] * steps * (int(config["n_e"]) + int(config["n_i"]))


@dataclass(frozen=True)
class Calibration:
    seconds_per_unit: dict[str, float]  # backend -> median epoch_s / work_units
    runs: dict[str, int]  # backend -> how many runs measured it

    @classmethod
    def from_epochs(cls, measured: Iterable[tuple[dict[str, Any], dict[str, Any]]]) -> "Calibration":
        """`measured`: (config, last epoch record) of recent training runs."""
        ratios: dict[str, list[float]] = {}
        for config, record in measured:
            seconds = record.get("epoch_s")
            if seconds and seconds > 0 and config.get("tier") in TIER_SIZES:
                ratios.setdefault(config.get("backend", "fast"), []).append(seconds / work_units(config))
        return cls({b: statistics.median(r) for b, r in ratios.items()}, {b: len(r) for b, r in ratios.items()})


@dataclass(frozen=True)
class Estimate:
    runs: int
    epochs: int  # summed over the runs
    seconds: float | None  # None: no measurement for a backend the plan uses
    missing_backends: tuple[str, ...]
    measured_runs: int
    workers: int

    def describe(self) -> str:
        if self.runs == 0:
            return "no training runs (analyses of the source run only)"
        if self.workers == 0:
            return "this server has no worker slots (queue only): nothing runs until one is started"
        if self.seconds is None:
            return (f"no estimate yet: no epoch measured on the {', '.join(self.missing_backends)} backend "
                    "on this server (train one short run first)")
        return (f"about {format_duration(self.seconds)} on this server ({self.workers} run(s) at once; "
                f"measured from the last epoch of {self.measured_runs} recent run(s); analyses come on top)")


def estimate(plan_runs: list[dict[str, Any]], calibration: Calibration, workers: int) -> Estimate:
    """`plan_runs`: the training configs (full Config dicts) a study would queue."""
    total, missing = 0.0, set()
    for config in plan_runs:
        rate = calibration.seconds_per_unit.get(config.get("backend", "fast"))
        if rate is None:
            missing.add(config.get("backend", "fast"))
        else:
            total += int(config["epochs"]) * work_units(config) * rate
    measured = sum(calibration.runs.get(b, 0) for b in {c.get("backend", "fast") for c in plan_runs})
    seconds = None if missing else total / max(1, min(workers, len(plan_runs) or 1))
    return Estimate(runs=len(plan_runs), epochs=sum(int(c["epochs"]) for c in plan_runs), seconds=seconds,
                    missing_backends=tuple(sorted(missing)), measured_runs=measured, workers=workers)


def format_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# --- FORCE ---------------------------------------------------------------------------------
# A FORCE experiment's time scales with its network-steps x N^2 (engine.force.experiments.work).
# Its pace comes from FORCE runs that finished here on their first attempt (a resumed attempt's
# time covers only what it ran), of the same experiment where one has finished, else of any;
# always among runs that go at comparable speed (`pace_key`): a float64 CPU step costs several
# float32 GPU ones, the reference loop many compiled ones, and a grid on 8 processes finishes its
# work faster than on one.
def pace_key(params: dict[str, Any]) -> tuple[str, str, str, int]:
    """(device kind, dtype, loop, processes) of validated FORCE params."""
    c = ForceConfig.from_dict(params["config"])
    return ("cuda" if c.device.startswith("cuda") else "cpu", c.dtype, "compiled" if c.compiled else "reference",
            int(params.get("processes", 1)))


def _where(key: tuple[str, str, str, int]) -> str:
    device, dtype, loop, processes = key
    return f"{device}, {dtype}, {loop}" + (f", {processes} processes" if processes > 1 else "")


@dataclass(frozen=True)
class ForceCalibration:
    paces: tuple[tuple[str, tuple, float], ...]  # (experiment, pace_key, seconds per unit of work)

    @classmethod
    def from_runs(cls, finished: Iterable[tuple[str, dict[str, Any], float, float]]) -> "ForceCalibration":
        """`finished`: (experiment, validated params, seconds, units of work) of succeeded FORCE runs."""
        return cls(tuple((experiment, pace_key(params), seconds / units)
                         for experiment, params, seconds, units in finished if seconds > 0 and units > 0))

    def describe(self, experiment: str, params: dict[str, Any], units: float) -> str:
        """How long validated params would take once they start, or why there is no estimate."""
        key = pace_key(params)
        alike = [(e, pace) for e, k, pace in self.paces if k == key]
        same = [pace for e, pace in alike if e == experiment]
        if not alike:
            return (f"Time once it starts: no estimate yet, as no FORCE run on {_where(key)} has finished on "
                    "this server (a short train run gives the first).")
        basis = (f"{len(same)} finished run(s) of the {experiment} experiment" if same
                 else f"{len(alike)} finished run(s) of other FORCE experiments")
        duration = format_duration(units * statistics.median(same or [pace for _, pace in alike]))
        return (f"Time once it starts: about {duration}, at the pace of {basis} on this server "
                f"({_where(key)}). Rough: start-up time inflates a short run's pace, and batching changes a grid's.")
