"""The study's experiments as named presets (seed 000, entry "024" and its follow-ups).

A preset names a training grid (base config x grid of config fields, like a
sweep) and/or the analyses to run. `expand(name, overrides)` turns it into a
`StudyPlan`: the validated training configs, each with a label, and the
analyses with validated parameters. Analyses run on each of the plan's training
runs or, for an inference-only preset (no training grid), on a source run.

Overrides (one flat dict, e.g. from `--set KEY=VALUE`) are routed by key:
- a grid axis of the preset (e.g. `seed`, `arch`, `ei_strength`): a list that
  replaces that axis's values;
- any other `Config` field (`tier`, `epochs`, `n_e`, `t_ms`, `backend`, ...): set
  on the base config of every training run;
- a parameter of the preset's analyses (e.g. `samples`, `factors`): set on every
  analysis that has it.
A key that is none of these is an error naming it.

Every preset that trains runs the study's own model, the `seed` recipe (MODEL.md,
last section), by default, on the fast backend; `recipe=canonical` runs the
canonical model instead.
A grid axis whose values are strengths in a recipe's units (nb036's E<->I grid)
has one list per recipe (`recipe_grid`), picked after the overrides.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, fields
from typing import Any

from engine.config import Config, ConfigError, fastest_backend

MAX_RUNS = 64  # a typo in an override should not queue a thousand trainings


class StudyError(ValueError):
    """Bad preset name or override; `field` names the offending key."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"{field_name} {message}")
        self.field = field_name
        self.message = message


@dataclass(frozen=True)
class StudyAnalysis:
    name: str
    params: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class StudyPreset:
    name: str
    title: str
    description: str
    base: dict[str, Any] = field(default_factory=dict)  # config fields of every training run
    grid: dict[str, list[Any]] = field(default_factory=dict)  # training grid; empty: inference only
    analyses: tuple[StudyAnalysis, ...] = ()
    report: tuple[str, ...] = ()  # report sections (engine.studies.report)
    recipe_grid: dict[str, dict[str, list[Any]]] = field(default_factory=dict)  # recipe -> axes

    def grid_for(self, recipe: str) -> dict[str, list[Any]]:
        """The training grid with the axes given in `recipe`'s own units."""
        return {k: list(v) for k, v in {**self.grid, **self.recipe_grid.get(recipe, {})}.items()}

    @property
    def needs_source(self) -> bool:
        return not self.grid

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "title": self.title, "description": self.description,
                "base": dict(self.base), "grid": {k: list(v) for k, v in self.grid.items()},
                "analyses": [{"name": a.name, "params": dict(a.params)} for a in self.analyses],
                "needs_source": self.needs_source, "report": list(self.report)}


@dataclass(frozen=True)
class PlannedRun:
    label: str  # e.g. "ping-seed42": stable, readable, unique within the plan
    config: dict[str, Any]  # a full, validated Config dict
    point: dict[str, Any]  # this run's grid coordinates


@dataclass(frozen=True)
class StudyPlan:
    name: str
    overrides: dict[str, Any]
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    runs: tuple[PlannedRun, ...]
    analyses: tuple[StudyAnalysis, ...]
    report: tuple[str, ...]

    @property
    def needs_source(self) -> bool:
        return not self.runs

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "overrides": self.overrides, "base": self.base, "grid": self.grid,
                "runs": [{"label": r.label, "config": r.config, "point": r.point} for r in self.runs],
                "analyses": [{"name": a.name, "params": a.params} for a in self.analyses],
                "report": list(self.report), "needs_source": self.needs_source}


SEEDS = [42, 43, 44]
# The study's recipe (MODEL.md, last section) at the medium tier, 100 epochs; recipe,
# tier and epochs are overridable (recipe=canonical: MODEL.md "Training recipe").
_RECIPE = {"recipe": "seed", "tier": "medium", "epochs": 100}
_PER_RUN_GAMMA = StudyAnalysis("rate_vs_gamma", {"tau_gaba_scales": [1.0]})

PRESETS: dict[str, StudyPreset] = {p.name: p for p in (
    StudyPreset(
        "nb024", "PING vs COBA, 100 epochs",
        "PING and COBA (loop off) trained from scratch, seeds 42/43/44: the seed table (final accuracy "
        "and E rate, last-10-epoch slopes, converged flags), trajectories, spike budget, rate and "
        "weight histograms.",
        base=dict(_RECIPE), grid={"arch": ["ping", "coba"], "seed": list(SEEDS)},
        report=("seed_table", "spike_budget", "trajectories")),
    StudyPreset(
        "coupling", "Coupling sweep (9 x 9) and its diagonal",
        "Trained W_ei x column factor, W_ie x row factor over 0..10 on a trained run's test set: "
        "E | I | total rate and accuracy per cell; the diagonal is the line chart.",
        analyses=(StudyAnalysis("coupling_sweep"),), report=("coupling",)),
    StudyPreset(
        "nb041", "Rate floor tracks gamma frequency (retrained)",
        "PING retrained at GABA decay times that move the gamma frequency, seeds 42/43/44; per run "
        "the E rate and the gamma peak, an affine fit of E rate against gamma frequency across "
        "all runs, and the fit per seed with its spread across seeds.",
        base=dict(_RECIPE, arch="ping"),
        grid={"tau_gaba_ms": [4.5, 6.0, 9.0, 13.5, 18.0], "seed": list(SEEDS)},
        analyses=(_PER_RUN_GAMMA,), report=("rate_vs_gamma",)),
    StudyPreset(
        "nb042", "Rhythm vs mean inhibition (phase shuffle)",
        "I->E inhibition replaced by its time-shuffled version with the same mean on a trained run: "
        "the E-rate release factor.",
        analyses=(StudyAnalysis("phase_shuffle"),), report=("analyses",)),
    StudyPreset(
        "nb037", "Dropping and adding spikes",
        "Delete a fraction of E spikes or add as many Poisson spikes on a trained run, fraction "
        "0.1 .. 1: accuracy, rates, cycle prominence and whether the gamma cycle survives, as curves.",
        analyses=(StudyAnalysis("drop_add_spikes", {"fractions": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]}),),
        report=("analyses",)),
    StudyPreset(
        "nb038", "f-I curves and inference-time loop transfer",
        "E and I rates against input-rate scale on a trained run, with I->E cut (open) and intact "
        "(closed): where the loop recruits; and a fresh E->I->E loop installed at test time in the "
        "trained run (the seed's source is COBA) at 0..1 x the PING strengths: accuracy, rates, rhythm.",
        analyses=(StudyAnalysis("fi_curve"), StudyAnalysis("loop_transfer")), report=("analyses",)),
    StudyPreset(
        "nb044", "dt audit",
        "The same recipe trained at dt 0.05 / 0.1 / 0.25 / 0.5 ms, PING and COBA; each trained run "
        "evaluated at every dt: rate, accuracy and gamma cycle period against dt.",
        base=dict(_RECIPE, seed=42), grid={"arch": ["ping", "coba"], "dt_ms": [0.05, 0.1, 0.25, 0.5]},
        analyses=(StudyAnalysis("dt_audit"),), report=("seed_table", "dt_audit")),
    StudyPreset(
        "nb036", "E<->I training grid (5 x 5)",
        "Networks trained from scratch at 5 x 5 fixed (E->I, I->E) strengths; each cell classed as "
        "PING (rhythmic loop), stretched COBA (I active, no rhythm) or no loop (I silent or cut).",
        base=dict(_RECIPE, arch="ping", seed=42),
        # 0, 1/4, 1/2, 1 and 2 times each recipe's own E->I and I->E strengths
        grid={"ei_strength": [0.0, 0.25, 0.5, 1.0, 2.0], "ie_strength": [0.0, 0.5, 1.0, 2.0, 4.0]},
        recipe_grid={"canonical": {"ei_strength": [0.0, 0.0125, 0.025, 0.05, 0.1],
                                   "ie_strength": [0.0, 0.25, 0.5, 1.0, 2.0]}},
        analyses=(_PER_RUN_GAMMA,), report=("seed_table", "ei_grid")),
)}


def list_presets() -> list[dict[str, Any]]:
    return [p.describe() for p in PRESETS.values()]


def expand(name: str, overrides: dict[str, Any] | None = None) -> StudyPlan:
    """The preset with `overrides` applied, every config and parameter validated."""
    from engine.analyses.registry import ANALYSES, AnalysisError

    if name not in PRESETS:
        raise StudyError("name", f"must be one of {sorted(PRESETS)}, got {name!r}")
    preset = PRESETS[name]
    overrides = dict(overrides or {})
    config_fields = {f.name for f in fields(Config)}
    recipe = overrides.get("recipe", preset.base.get("recipe", "canonical"))
    base, grid = dict(preset.base), preset.grid_for(recipe if isinstance(recipe, str) else "")
    params = [dict(a.params) for a in preset.analyses]
    for key, value in overrides.items():
        takers = [p for p, a in zip(params, preset.analyses) if key in ANALYSES[a.name].defaults]
        if key in grid:
            if not isinstance(value, list) or not value:
                raise StudyError(key, f"is a grid axis of {name}: give a non-empty list, got {value!r}")
            grid[key] = value
        elif preset.grid and key in config_fields:
            base[key] = value
        elif takers:
            for p in takers:
                p[key] = value
        else:
            raise StudyError(key, f"is not a grid axis, config field or analysis parameter of {name}")
    if "backend" not in base:  # fast: it runs both recipes on every device
        base["backend"] = fastest_backend(base)
    runs = _expand_runs(base, grid)
    analyses = []
    for analysis, p in zip(preset.analyses, params):
        try:
            analyses.append(StudyAnalysis(analysis.name, ANALYSES[analysis.name].validate(p)))
        except AnalysisError as exc:
            raise StudyError(exc.field, exc.message) from exc
    return StudyPlan(name=name, overrides=overrides, base=base, grid=grid, runs=tuple(runs),
                     analyses=tuple(analyses), report=preset.report)


def _expand_runs(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[PlannedRun]:
    total = 1
    for values in grid.values():
        total *= len(values)
    if total > MAX_RUNS:
        raise StudyError("grid", f"expands to {total} runs; at most {MAX_RUNS} are allowed")
    runs = []
    for combo in itertools.product(*grid.values()) if grid else ():
        point = dict(zip(grid, combo))
        try:
            config = Config.from_dict({**base, **point}).to_dict()
        except ConfigError as exc:
            raise StudyError(exc.field, exc.message) from exc
        except TypeError as exc:  # a value the dataclass cannot hold at all
            raise StudyError("overrides", str(exc)) from exc
        runs.append(PlannedRun(label=run_label(point), config=config, point=point))
    if len({r.label for r in runs}) != len(runs):
        raise StudyError("grid", "has repeated values")
    return runs


def run_label(point: dict[str, Any]) -> str:
    """'ping-seed42', 'tau_gaba_ms4.5', 'ei_strength0.05-ie_strength1.0'."""
    parts = []
    for key, value in point.items():
        parts.append(str(value) if key == "arch" else f"{key}{value}")
    return "-".join(parts)
