"""Run a study in this process (or a small process pool), without a run store.

Folder layout (what `engine.studies.report.entries_from_folder` reads back):

    OUT/plan.json                            the expanded StudyPlan
    OUT/runs/<label>/                        one run folder per training run
    OUT/analyses/<label>/<analysis>/result.json
                                             <label> is "source" for an inference-only study

A training run already finished in OUT with the plan's epochs is not trained
again; an interrupted one, or one asked for more epochs, resumes from its
checkpoint, so rerunning the same command continues or extends a study.
"""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Callable

from engine.rundir import RunDir
from engine.studies.presets import StudyPlan

SOURCE_LABEL = "source"
Log = Callable[[str], None]


def run_study_local(plan: StudyPlan, out: str | Path, *, source_run: str | Path | None = None,
                    parallel: int = 1, threads: int = 1, log: Log = print) -> Path:
    """Train the plan's runs (each followed by the plan's analyses on it), or run the
    analyses on `source_run`; `parallel` runs at once, `threads` torch threads each."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "plan.json").write_text(json.dumps(plan.to_dict(), indent=2))
    analyses = [{"name": a.name, "params": a.params} for a in plan.analyses]
    if plan.needs_source:
        if source_run is None:
            raise ValueError(f"study {plan.name} runs on a trained run: give its folder as the source")
        run_unit(None, str(source_run), SOURCE_LABEL, analyses, str(out), threads)
        log(f"{plan.name}: analyses of {source_run} done")
        return out
    units = [(r.config, str(out / "runs" / r.label), r.label, analyses, str(out), threads) for r in plan.runs]
    if parallel <= 1:
        for unit in units:
            run_unit(*unit)
            log(f"{plan.name}: {unit[2]} done")
        return out
    # spawn: a forked child would inherit torch's thread pools in an unknown state
    with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(run_unit, *unit): unit[2] for unit in units}
        for future, label in futures.items():
            future.result()
            log(f"{plan.name}: {label} done")
    return out


def run_unit(config: dict[str, Any] | None, run_dir: str, label: str, analyses: list[dict[str, Any]],
             out: str, threads: int) -> None:
    """Train one run (unless `config` is None or it already finished), then its analyses."""
    import torch

    from engine.analyses.registry import run_analysis
    from engine.config import Config
    from engine.train import train

    torch.set_num_threads(threads)
    if config is not None and not _trained(run_dir, config["epochs"]):
        train(Config.from_dict(config), run_dir, resume=True)
    for analysis in analyses:
        target = Path(out) / "analyses" / label / analysis["name"]
        done = target / "result.json"
        if done.exists() and json.loads(done.read_text()).get("complete"):
            continue
        run_analysis(analysis["name"], run_dir, analysis["params"], target)


def _trained(run_dir: str, epochs: int) -> bool:
    """Finished with at least `epochs` epochs (a run asked for more epochs resumes)."""
    run = RunDir(run_dir)
    return run.summary_path.exists() and len(run.read_metrics()) >= epochs
