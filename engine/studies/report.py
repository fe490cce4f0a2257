"""A study's report: plain data built from its runs' folders and analysis results,
exported as Markdown and CSV. The API, the CLI and the dashboard call the same
functions, so the figures agree wherever they are shown.

`build_report(plan, entries)` takes the plan (`StudyPlan.to_dict()`) and one entry
per training run (or one "source" entry for an inference-only study):

    {"label": str, "point": {grid coordinates}, "config": {...} | None,
     "state": "queued" | "running" | "succeeded" | ..., "metrics": [epoch records],
     "analyses": {analysis name: result dict (maybe partial) or None}}

and returns (keys present when the study has what they need):

    name, title, runs (label, point, state, epochs done)
    seed_table   one row per training run with epochs so far (a 100-epoch study runs
                 for hours): arch, seed, epochs, final (latest) test accuracy (%),
                 E and I rate (Hz), last-10-epoch slopes of accuracy (pp/epoch) and
                 E rate (Hz/epoch), converged flags, and the run's state
    spike_budget per grid point other than the seed (nb024: per arch; nb036: per
                 (ei, ie); nb044: per (arch, dt)), means over its finished runs (the
                 seeds): E, I, E + I rate and the population-weighted per-cell total
                 (n_e r_E + n_i r_I)/(n_e + n_i)
    trajectories label -> [{epoch, test_acc, rate_e_hz}]
    per_run      label -> the per-run analysis summary rows (rate_vs_gamma at scale 1)
    rate_vs_gamma, dt_audit, ei_grid, coupling: preset-specific tables
    analyses     every analysis result: label, name, complete, summary, cells
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from engine.analyses.coupling import unstable_cells
from engine.analyses.gamma import affine_fit
from engine.convergence import summarise
from engine.rundir import RunDir
from engine.stability import UNSTABLE_STEP_FACTOR
from engine.studies.presets import PRESETS, run_label
from engine.studies.local import SOURCE_LABEL

# nb036 classes. The seed names them, not their boundaries; these are ours:
I_SILENT_HZ = 1.0  # I below this rate does no inhibitory work: no loop
PING_PROMINENCE = 4.0  # gamma peak / median power at or above this: a rhythm (PING)


def entries_from_folder(out: str | Path) -> list[dict[str, Any]]:
    """Entries of a study run by engine.studies.local into `out`."""
    out = Path(out)
    plan = json.loads((out / "plan.json").read_text())
    analyses = [a["name"] for a in plan["analyses"]]
    runs = plan["runs"] or [{"label": SOURCE_LABEL, "point": {}, "config": None}]
    entries = []
    for run in runs:
        folder = RunDir(out / "runs" / run["label"])
        metrics = folder.read_metrics()
        done = folder.summary_path.exists() or run["config"] is None
        results = {}
        for name in analyses:
            path = out / "analyses" / run["label"] / name / "result.json"
            results[name] = json.loads(path.read_text()) if path.exists() else None
        entries.append({"label": run["label"], "point": run["point"], "config": run["config"],
                        "state": "succeeded" if done else ("running" if metrics else "queued"),
                        "metrics": metrics, "analyses": results})
    return entries


def build_report(plan: dict[str, Any], entries: list[dict[str, Any]]) -> dict[str, Any]:
    preset = PRESETS[plan["name"]]
    report: dict[str, Any] = {
        "name": plan["name"], "title": preset.title, "overrides": plan["overrides"],
        "runs": [{"label": e["label"], "point": e["point"], "state": e["state"],
                  "epochs_done": len(e["metrics"])} for e in entries],
    }
    trained = [e for e in entries if e["metrics"] and e["state"] == "succeeded"]
    if plan["runs"]:
        report["seed_table"] = [{**seed_row(e), "state": e["state"]} for e in entries if e["metrics"]]
        axes = [k for k in plan["grid"] if k != "seed"]
        report["spike_budget"] = spike_budget(trained, axes)
        if any(e["metrics"] and e["state"] != "succeeded" for e in entries):
            # a study at the seed's scale trains for days: until every run has finished,
            # the budget at the latest epoch that matched runs share
            report["spike_budget_so_far"] = spike_budget_so_far(entries, axes)
        report["trajectories"] = {e["label"]: [{k: r[k] for k in ("epoch", "test_acc", "rate_e_hz")}
                                               for r in e["metrics"]] for e in entries}
    report["analyses"] = [{"label": e["label"], "name": name, "complete": bool(r and r.get("complete")),
                           "summary": (r or {}).get("summary"), "cells": (r or {}).get("cells", [])}
                          for e in entries for name, r in e["analyses"].items()]
    per_run = {e["label"]: e["analyses"]["rate_vs_gamma"]["cells"][0] for e in entries
               if (e["analyses"].get("rate_vs_gamma") or {}).get("cells")}
    if per_run:
        report["per_run"] = per_run
    sections = {"rate_vs_gamma": rate_vs_gamma_section, "dt_audit": dt_audit_section,
                "ei_grid": ei_grid_section, "coupling": coupling_section}
    for name in preset.report:
        if name in sections:
            report[name] = sections[name](entries)
    return report


def seed_row(entry: dict[str, Any]) -> dict[str, Any]:
    summary = summarise(entry["metrics"])
    config = entry["config"]
    return {
        "label": entry["label"], "arch": config["arch"], "seed": config["seed"], **entry["point"],
        "epochs": summary["epochs"], "final_acc_pct": summary["final"]["test_acc"],
        "final_rate_e_hz": summary["final"]["rate_e_hz"], "final_rate_i_hz": summary["final"]["rate_i_hz"],
        "rate_e_slope_hz_per_epoch": summary["slopes"]["rate_e_hz_per_epoch"],
        "acc_slope_pp_per_epoch": summary["slopes"]["test_acc_pp_per_epoch"],
        "slope_window": summary["slopes"]["window"],
        "converged_rate_e": summary["converged"]["rate_e"], "converged_acc": summary["converged"]["test_acc"],
    }


def spike_budget(trained: list[dict[str, Any]], axes: list[str] | None = None) -> list[dict[str, Any]]:
    """Final-epoch rates averaged over the runs that share a grid point on `axes`
    (the grid's axes other than the seed; default: arch), so replicates are pooled
    and different networks are not."""
    axes = list(axes) if axes else ["arch"]
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for e in trained:
        groups.setdefault(_grid_point(e, axes), []).append(e)
    rows = []
    for key, runs in groups.items():
        finals = [e["metrics"][-1] for e in runs]
        n_e, n_i = runs[0]["config"]["n_e"], runs[0]["config"]["n_i"]
        rate_e = sum(f["rate_e_hz"] for f in finals) / len(finals)
        rate_i = sum(f["rate_i_hz"] for f in finals) / len(finals)
        point = dict(zip(axes, key))
        rows.append({"group": run_label(point), "arch": runs[0]["config"]["arch"], **point, "runs": len(runs),
                     "epochs": ", ".join(str(len(e["metrics"])) for e in runs),
                     "n_e": n_e, "n_i": n_i, "rate_e_hz": rate_e,
                     "rate_i_hz": rate_i, "rate_e_plus_i_hz": rate_e + rate_i,
                     "per_cell_total_hz": (n_e * rate_e + n_i * rate_i) / (n_e + n_i)})
    return rows


def _grid_point(entry: dict[str, Any], axes: list[str]) -> tuple:
    """The entry's values on `axes`: its grid point, else its config (None without one)."""
    return tuple(entry["point"].get(k, (entry["config"] or {}).get(k)) for k in axes)


def spike_budget_so_far(entries: list[dict[str, Any]], axes: list[str]) -> list[dict[str, Any]]:
    """The budget of a study still training, matched: only the seeds that have begun a
    run at every grid point on `axes`, each run at the epoch all of those have reached.
    (Pooling each run's latest epoch compared one seed's epoch 85 with another's epoch 7:
    a learning curve read as a difference between networks.) Rows carry the `seeds`
    and the epoch (`at_epoch`); none until some seed has a run with an epoch everywhere."""
    axes = list(axes) if axes else ["arch"]
    points = {_grid_point(e, axes) for e in entries}
    by_seed: dict[Any, dict[tuple, dict[str, Any]]] = {}
    for e in entries:
        if e["metrics"]:
            by_seed.setdefault(_grid_point(e, ["seed"])[0], {})[_grid_point(e, axes)] = e
    matched = {seed: runs for seed, runs in by_seed.items() if set(runs) == points}
    if not matched:
        return []
    epoch = min(len(e["metrics"]) for runs in matched.values() for e in runs.values())
    at_epoch = [{**e, "metrics": e["metrics"][:epoch]} for runs in matched.values() for e in runs.values()]
    seeds = ", ".join(str(seed) for seed in sorted(matched, key=str))
    return [{**row, "seeds": seeds, "at_epoch": epoch} for row in spike_budget(at_epoch, axes)]


def _per_run_cell(entry: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return (entry["analyses"].get(name) or {}).get("cells", [])


def rate_vs_gamma_section(entries: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [{"label": e["label"], **e["point"], **{k: c[k] for k in (
        "rate_e_hz", "rate_i_hz", "gamma_peak_hz", "gamma_prominence", "test_acc")}}
            for e in entries for c in _per_run_cell(e, "rate_vs_gamma")[:1]]
    fit = affine_fit([r["gamma_peak_hz"] for r in rows], [r["rate_e_hz"] for r in rows])
    seeds = sorted({r["seed"] for r in rows if "seed" in r})
    per_seed = []
    for seed in seeds:
        mine = [r for r in rows if r.get("seed") == seed]
        seed_fit = affine_fit([r["gamma_peak_hz"] for r in mine], [r["rate_e_hz"] for r in mine])
        if seed_fit:
            per_seed.append({"seed": seed, **seed_fit})
    return {"rows": rows, "fit": fit, "per_seed": per_seed, "spread": fit_spread(per_seed)}


def fit_spread(per_seed: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Mean and sample standard deviation across seeds of the per-seed fits' slope and
    intercept (nb041's claim is an affine fit with its spread across seeds)."""
    if len(per_seed) < 2:
        return None
    out: dict[str, Any] = {"seeds": len(per_seed)}
    for key in ("slope_hz_per_hz", "intercept_hz"):
        values = [f[key] for f in per_seed]
        mean = sum(values) / len(values)
        out[f"{key}_mean"] = mean
        out[f"{key}_sd"] = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5
    return out


def dt_audit_section(entries: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [{"label": e["label"], "arch": (e["config"] or {}).get("arch"), **c}
            for e in entries for c in _per_run_cell(e, "dt_audit")]
    return {"rows": rows, "summary": dt_summary(rows)}


def dt_summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nb044's reading, per arch: each run trained at dt and evaluated at its own dt;
    least-squares E rate and gamma cycle period against dt (slope per ms of dt)."""
    out = []
    for arch in sorted({r["arch"] for r in rows if r.get("arch")}):
        own = sorted((r for r in rows if r.get("arch") == arch and r["dt_ms"] == r["trained_dt_ms"]),
                     key=lambda r: r["dt_ms"])
        rate = affine_fit([r["dt_ms"] for r in own], [r["rate_e_hz"] for r in own])
        timed = [r for r in own if r.get("cycle_ms") is not None]
        cycle = affine_fit([r["dt_ms"] for r in timed], [r["cycle_ms"] for r in timed])
        out.append({"arch": arch, "dts_ms": [r["dt_ms"] for r in own],
                    "rate_e_hz": [r["rate_e_hz"] for r in own], "cycle_ms": [r.get("cycle_ms") for r in own],
                    "rate_e_slope_hz_per_ms": rate and rate["slope_hz_per_hz"],
                    "cycle_slope_ms_per_ms": cycle and cycle["slope_hz_per_hz"]})
    return out


def classify(ie_strength: float, cell: dict[str, Any]) -> str:
    """nb036's class of a trained cell: no loop / PING / stretched COBA."""
    if ie_strength == 0 or cell["rate_i_hz"] < I_SILENT_HZ:
        return "no loop"
    if (cell["gamma_prominence"] or 0.0) >= PING_PROMINENCE:
        return "PING"
    return "stretched COBA"


def ei_grid_section(entries: list[dict[str, Any]]) -> dict[str, Any]:
    rows = []
    for e in entries:
        for c in _per_run_cell(e, "rate_vs_gamma")[:1]:
            config = e["config"]
            rows.append({"label": e["label"], "ei_strength": config["ei_strength"],
                         "ie_strength": config["ie_strength"], "rate_e_hz": c["rate_e_hz"],
                         "rate_i_hz": c["rate_i_hz"], "gamma_peak_hz": c["gamma_peak_hz"],
                         "gamma_prominence": c["gamma_prominence"], "test_acc": c["test_acc"],
                         "class": classify(config["ie_strength"], c)})
    return {"rows": rows, "i_silent_hz": I_SILENT_HZ, "ping_prominence": PING_PROMINENCE,
            "cliffs": cliffs(rows)}


def cliff_position(xs: list[float], rates: list[float]) -> float | None:
    """Where E rate first falls through halfway between its value at the weakest
    coupling and its minimum, linearly interpolated; None if it never falls."""
    points = sorted(zip(xs, rates))
    high, low = points[0][1], min(r for _, r in points)
    if high <= low:
        return None
    half = (high + low) / 2
    for (x0, r0), (x1, r1) in zip(points, points[1:]):
        if r1 <= half < r0:
            return x0 + (x1 - x0) * (r0 - half) / (r0 - r1)
    return None


def cliffs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """nb036's cliff: per E->I strength, the I->E strength at which E rate falls by half
    of its drop (`cliff_position`), and the weakest I->E strength classed PING."""
    out = []
    for ei in sorted({r["ei_strength"] for r in rows}):
        line = sorted((r for r in rows if r["ei_strength"] == ei), key=lambda r: r["ie_strength"])
        ping = [r["ie_strength"] for r in line if r["class"] == "PING"]
        out.append({"ei_strength": ei, "cliff_ie_strength": cliff_position(
            [r["ie_strength"] for r in line], [r["rate_e_hz"] for r in line]) if len(line) > 1 else None,
                    "first_ping_ie_strength": ping[0] if ping else None})
    return out


def coupling_section(entries: list[dict[str, Any]]) -> dict[str, Any]:
    result = next((e["analyses"].get("coupling_sweep") for e in entries
                   if e["analyses"].get("coupling_sweep")), None) or {}
    return {"cells": result.get("cells", []), "diagonal": (result.get("summary") or {}).get("diagonal", [])}


# --- exports --------------------------------------------------------------------------

def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def markdown_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no rows yet)\n"
    columns = list(dict.fromkeys(k for row in rows for k in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def report_markdown(report: dict[str, Any]) -> str:
    parts = [f"# {report['name']}: {report['title']}\n",
             f"Overrides: `{json.dumps(report['overrides'])}`\n",
             "## Runs\n", markdown_table([{**r, "point": json.dumps(r["point"])} for r in report["runs"]])]
    if "seed_table" in report:
        parts += ["## Seed table\n", markdown_table(report["seed_table"]),
                  "## Spike budget (final epoch, mean over seeds per grid point)\n",
                  markdown_table(report["spike_budget"])]
        if "spike_budget_so_far" in report:
            parts += ["## Spike budget so far (the seeds with a run at every grid point, at the epoch they share)\n",
                      markdown_table(report["spike_budget_so_far"])]
    if "rate_vs_gamma" in report:
        parts += ["## E rate against gamma frequency\n", markdown_table(report["rate_vs_gamma"]["rows"]),
                  f"Affine fit, all runs: `{json.dumps(report['rate_vs_gamma']['fit'])}`\n",
                  "Affine fit per seed:\n", markdown_table(report["rate_vs_gamma"].get("per_seed", [])),
                  f"Spread across seeds: `{json.dumps(report['rate_vs_gamma'].get('spread'))}`\n"]
    for key, title in (("dt_audit", "dt audit"), ("ei_grid", "E<->I grid classes")):
        if key in report:
            parts += [f"## {title}\n", markdown_table(report[key]["rows"])]
    if "dt_audit" in report:
        parts += ["## Rate and cycle period against dt (each run at its own dt)\n",
                  markdown_table([_flat(r) for r in report["dt_audit"]["summary"]])]
    if "ei_grid" in report:
        grid = report["ei_grid"]
        parts += [f"Classes: no loop if I < {grid['i_silent_hz']} Hz or ie = 0; PING if the gamma "
                  f"prominence >= {grid['ping_prominence']}; else stretched COBA.\n",
                  "## Cliff per E->I strength\n", markdown_table(grid["cliffs"])]
    if "coupling" in report:
        parts += ["## Coupling diagonal\n", markdown_table(report["coupling"]["diagonal"])]
        unstable = unstable_cells(report["coupling"]["cells"])
        if unstable:
            parts.append(f"Forward Euler left its stable range (euler_step_max = dt g/C >= {UNSTABLE_STEP_FACTOR:g}) "
                         f"in {len(unstable)} of {len(report['coupling']['cells'])} cells: their rates are the "
                         "integrator's, not the network's.\n")
    if "seed_table" not in report:  # an inference study: each analysis in full
        for analysis in report["analyses"]:
            parts.append(f"## {analysis['name']} on the source run{'' if analysis['complete'] else ' (partial)'}\n")
            summary = analysis["summary"]
            if summary and "diagonal" not in summary:  # the coupling diagonal has its own section
                parts.append(markdown_table([_flat(summary)]))
            parts.append(markdown_table(analysis["cells"]))
    return "\n".join(parts)


def _flat(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in summary.items()}


def primary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The CSV's one table: the seed table joined with each run's per-run analysis
    row (training studies), or the analyses' cells (inference-only studies)."""
    if "seed_table" in report:
        per_run = report.get("per_run", {})
        return [{**row, **{f"inference.{k}": v for k, v in per_run.get(row["label"], {}).items()}}
                for row in report["seed_table"]]
    return [{"analysis": a["name"], **cell} for a in report["analyses"] for cell in a["cells"]]


def report_csv(report: dict[str, Any]) -> str:
    rows = primary_rows(report)
    columns = list(dict.fromkeys(k for row in rows for k in row)) or ["label"]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
