"""The service layer: what the REST routers, the CLI and the dashboard call.

One code path per action; each validates its input, changes the store in one
transaction and, where a worker must be told (cancel), tells the scheduler.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, AsyncIterator

from engine.config import Config, ConfigError
from jobs.backup import BackupSummary, backup
from jobs.models import (Conflict, InvalidRequest, InvalidTransition, QueueStatus, Run, RunKind,
                         RunNotFound, RunState, Sweep)
from jobs.finetune import check_source
from jobs.limits import RunLimits
from jobs.paths import DataDir, is_temporary
from jobs.store import RunStore
from jobs.studies import Study
from jobs.sweeps import expand_grid
from jobs.version import code_version

EVENT_POLL_S = 0.25


class NotFound(RunNotFound):
    """A file that is not (or may not be served) inside a run's folder."""

    def __init__(self, message: str):
        Exception.__init__(self, message)


def validate_config(fields: dict[str, Any], limits: RunLimits | None = None) -> dict[str, Any]:
    """The one validation of a run config: the engine's own, then (with `limits`)
    this server's size limits. Every bad field is named, not only the first."""
    return _checked_config(fields, limits).to_dict()


def _checked_config(fields: dict[str, Any], limits: RunLimits | None) -> Config:
    errors: list[tuple[str, str]] = []
    remaining = dict(fields)
    config = None
    # the engine stops at the first bad field: drop it (its default stands in) and look again
    for _ in range(len(fields) + 1):
        try:
            config = Config.from_dict(remaining)
            break
        except ConfigError as exc:
            errors.append((exc.field, exc.message))
            if exc.field not in remaining:  # a rule between fields, or a default: nothing left to drop
                break
            del remaining[exc.field]
        except TypeError as exc:  # e.g. a value the dataclass cannot hold at all
            errors.append(("config", str(exc)))
            break
    if not errors and config is not None and limits is not None:
        errors = limits.check(config)
    if errors or config is None:
        (field, message), *more = errors or [("config", "is not a valid config")]
        raise InvalidRequest(field, message, more=tuple(more))
    return config


class JobService:
    def __init__(self, store: RunStore, data: DataDir, cancel_worker=None, limits: RunLimits | None = None):
        # cancel_worker(run_id) signals the run's worker; the server passes the
        # scheduler's, a process without workers (a script, tests) passes none.
        self.store, self.data = store, data
        self.limits = limits or RunLimits.for_machine()
        # rasters simulate inside the server process: at most two at a time
        self._rasters = threading.BoundedSemaphore(2)
        self._cancel_worker = cancel_worker or (lambda run_id: None)

    # --- runs -------------------------------------------------------------------
    def submit_run(self, fields: dict[str, Any]) -> Run:
        config = validate_config(fields, self.limits)
        check_source(self.store, self.data, config)  # a fine-tune's init_run (jobs.finetune)
        return self.store.create_run(RunKind.TRAIN, config, code_version=code_version())

    def get_run(self, run_id: str) -> Run:
        return self.store.get_run(run_id)

    def list_runs(self, **filters: Any) -> tuple[list[Run], int]:
        return self.store.list_runs(**filters)

    def cancel_run(self, run_id: str) -> Run:
        run = self.store.request_cancel(run_id)
        if run.state is RunState.RUNNING:
            self._cancel_worker(run_id)
        return run

    def requeue_run(self, run_id: str) -> Run:
        """A running run goes back to the queue (409 otherwise): it stops at its next batch,
        resumes from its last checkpoint when it next gets a slot, and waits its turn; the
        epoch in progress is trained again. Its slot goes to the queue's next run (a run of a
        pack leaves the pack; the pack's slot frees when its last run does)."""
        run = self.store.request_requeue(run_id)
        self._cancel_worker(run_id)  # SIGTERM: the worker stops and requeues the run (record_outcome)
        return run

    def move_to_front(self, run_id: str) -> Run:
        """Queued runs only (409 otherwise): the next free slot starts this one."""
        return self.store.move_to_front(run_id)

    # --- the queue as a whole ----------------------------------------------------------
    def queue_status(self) -> QueueStatus:
        _, queued = self.store.list_runs(state=RunState.QUEUED, limit=1)
        _, running = self.store.list_runs(state=RunState.RUNNING, limit=1)
        return QueueStatus(self.queue_paused_at(), queued, running)

    def queue_paused_at(self) -> float | None:
        """When the queue was paused; None while it serves runs (one cheap read)."""
        return self.store.queue_paused_at()

    def pause_queue(self) -> QueueStatus:
        """No queued run starts until `resume_queue` (running runs go on): queue several
        runs, order them (`move_to_front`), then resume, and the first queued does not
        take a free slot before the others are in."""
        self.store.pause_queue()
        return self.queue_status()

    def resume_queue(self) -> QueueStatus:
        self.store.resume_queue()
        return self.queue_status()

    def rerun(self, run_id: str) -> Run:
        """A new queued run with the same config. Its `source_run_id` names the run it
        repeats; an analysis's re-run keeps the trained run it analyses as its source."""
        old = self.store.get_run(run_id)
        source = old.source_run_id if old.kind is RunKind.ANALYSIS else old.id
        return self.store.create_run(old.kind, old.config, source_run_id=source, code_version=code_version())

    def delete_run(self, run_id: str) -> None:
        """Finished runs only (409 otherwise: cancel first); removes its folder too."""
        self.store.delete_run(run_id)
        shutil.rmtree(self.data.run_dir(run_id), ignore_errors=True)

    # --- metrics and files ----------------------------------------------------------
    def metrics(self, run_id: str, after_epoch: int = 0) -> list[dict[str, Any]]:
        self.store.get_run(run_id)  # 404 for an unknown run, not an empty list
        return self.store.metrics(run_id, after_epoch=after_epoch)

    def last_epochs(self, run_ids: list[str]) -> dict[str, dict[str, Any]]:
        """Each run's latest epoch record (runs without one are absent)."""
        return self.store.last_epochs(run_ids)

    def metrics_csv(self, run_id: str) -> str:
        rows = [flatten(r) for r in self.metrics(run_id)]
        columns = list(dict.fromkeys(k for row in rows for k in row)) or ["epoch"]
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return out.getvalue()

    def list_artifacts(self, run_id: str) -> list[dict[str, Any]]:
        self.store.get_run(run_id)
        root = self.data.run_dir(run_id).resolve()
        if not root.is_dir():
            return []
        # only what artifact_path would serve: no links out, no half-written temporaries
        return [{"name": p.relative_to(root).as_posix(), "size_bytes": p.stat().st_size}
                for p in sorted(root.rglob("*"))
                if p.is_file() and p.resolve().is_relative_to(root) and not is_temporary(p)]

    def artifact_path(self, run_id: str, name: str) -> Path:
        """The file `name` inside the run's folder; anything resolving outside it
        (.., absolute paths, symlinks out) is reported as not found."""
        self.store.get_run(run_id)
        root = self.data.run_dir(run_id).resolve()
        try:
            path = (root / name).resolve()
        except (OSError, ValueError) as exc:
            raise NotFound(f"artifact {name} not found in run {run_id}") from exc
        if not path.is_relative_to(root) or not path.is_file():
            raise NotFound(f"artifact {name} not found in run {run_id}")
        return path

    def spike_raster(self, run_id: str, sample: int = 0, ei_factor: float = 1.0,
                     ie_factor: float = 1.0) -> dict[str, Any]:
        """Spikes of one test image through a train run's weights (final ones once
        it has succeeded, else its last checkpoint), W_ei and W_ie optionally scaled."""
        from engine.inspect import spike_raster

        run = self.store.get_run(run_id)
        if run.kind is not RunKind.TRAIN:
            raise Conflict(f"run {run_id} is a {run.kind.value} run; rasters need a train run")
        run_dir = self.data.run_dir(run_id)
        weights = "final" if (run_dir / "artifacts" / "weights_final.npz").exists() else "last"
        if weights == "last" and not (run_dir / "checkpoints" / "last.pt").exists():
            raise Conflict(f"run {run_id} has no weights yet (no finished epoch)")
        for name, factor in (("ei_factor", ei_factor), ("ie_factor", ie_factor)):
            if not 0.0 <= factor <= 100.0:
                raise InvalidRequest(name, f"must be in [0, 100], got {factor}")
        with self._rasters:
            try:
                return spike_raster(run_dir, sample, weights, ei_factor, ie_factor)
            except IndexError as exc:
                raise InvalidRequest("sample", str(exc)) from exc
            except (OSError, RuntimeError, ValueError) as exc:  # unreadable files, data tier unavailable
                raise Conflict(f"run {run_id} cannot be simulated here: {exc}") from exc

    # --- analyses -------------------------------------------------------------------
    def _check_analysable(self, source: Run, weights: str, what: str) -> None:
        """Final weights need a succeeded train run. Its latest checkpoint ("last") or
        its start ("init") can be analysed on any train run that has one: a 100-epoch
        run is worth a look while it trains."""
        if source.kind is RunKind.TRAIN and source.state is RunState.SUCCEEDED:
            return
        if source.kind is RunKind.TRAIN and weights in ("last", "init"):
            from engine.rundir import RunDir

            run = RunDir(self.data.run_dir(source.id))
            present = run.checkpoint_path.exists() if weights == "last" else \
                (run.artifacts / "weights_init.npz").exists()
            if present:
                return
            raise Conflict(f"run {source.id} has no {'checkpoint' if weights == 'last' else 'initial weights'} "
                           f"yet: {what} of weights={weights!r} needs one (wait for its first epoch)")
        hint = "; weights='last' analyses a train run's latest checkpoint" if source.kind is RunKind.TRAIN else ""
        raise Conflict(f"run {source.id} is a {source.state.value} {source.kind.value} run; "
                       f"{what} of its final weights needs a succeeded train run{hint}")

    def submit_analysis(self, run_id: str, name: str, params: dict[str, Any]) -> Run:
        source = self.store.get_run(run_id)
        checked = validate_analysis(name, params)
        self._check_analysable(source, checked.get("weights", "final"), "an analysis")
        return self.store.create_run(RunKind.ANALYSIS, {"name": name, "params": checked},
                                     source_run_id=run_id, code_version=code_version())

    # --- sweeps ---------------------------------------------------------------------
    def submit_sweep(self, base: dict[str, Any], grid: dict[str, list[Any]]) -> Sweep:
        configs = expand_grid(base, grid)
        self._check_sizes(configs, "grid")
        for config in configs:
            check_source(self.store, self.data, config, "grid." if "init_run" in grid else "")
        return self.store.create_sweep(base, grid, configs, code_version=code_version())

    def _check_sizes(self, configs: list[dict[str, Any]], where: str) -> None:
        """Each run against the per-run limits, all of them against the per-request one."""
        checked = [Config.from_dict(c) for c in configs]
        for config in checked:
            errors = self.limits.check(config)
            if errors:
                (field, message), *more = [(f"{where}.{f}", m) for f, m in errors]
                raise InvalidRequest(field, message, more=tuple(more))
        errors = self.limits.check_request(checked)
        if errors:
            raise InvalidRequest(where, errors[0][1])

    def get_sweep(self, sweep_id: str) -> Sweep:
        return self.store.get_sweep(sweep_id)

    def list_sweeps(self, limit: int = 100, offset: int = 0) -> tuple[list[Sweep], int]:
        return self.store.list_sweeps(limit=limit, offset=offset)

    def cancel_sweep(self, sweep_id: str) -> Sweep:
        sweep = self.store.get_sweep(sweep_id)
        if sweep.state.finished:
            raise Conflict(f"sweep {sweep_id} is {sweep.state.value}; there is nothing to cancel")
        self.store.mark_sweep_cancelled(sweep_id)
        for run_id, state in zip(sweep.run_ids, sweep.child_states):
            if not state.finished:
                try:
                    self.cancel_run(run_id)
                except InvalidTransition:
                    pass  # finished meanwhile
        return self.store.get_sweep(sweep_id)

    # --- studies ------------------------------------------------------------------------
    def submit_study(self, name: str, overrides: dict[str, Any] | None = None,
                     source_run_id: str | None = None) -> Study:
        """Queue a study preset: its training runs now, their analyses as each run
        succeeds (`advance_study`); an inference-only preset analyses `source_run_id`."""
        from engine.studies import StudyError, expand

        try:
            plan = expand(name, overrides or {}).to_dict()
        except StudyError as exc:
            raise InvalidRequest("name" if exc.field == "name" else f"overrides.{exc.field}", exc.message) from exc
        self._check_sizes([r["config"] for r in plan["runs"]], "overrides")
        source_analyses = []
        if plan["needs_source"]:
            if source_run_id is None:
                raise InvalidRequest("source_run_id", f"study {name} analyses a trained run: give its id")
            source = self.store.get_run(source_run_id)
            for weights in {a["params"].get("weights", "final") for a in plan["analyses"]}:
                self._check_analysable(source, weights, f"study {name}")
            source_analyses = [(a["name"], {"name": a["name"], "params": a["params"]}) for a in plan["analyses"]]
        elif source_run_id is not None:
            raise InvalidRequest("source_run_id", f"study {name} trains its own runs; it takes no source")
        return self.store.create_study(name, plan, source_run_id=source_run_id, source_analyses=source_analyses,
                                       code_version=code_version())

    def advance_study(self, study_id: str) -> Study:
        """Queue the plan's analyses on each training run that has succeeded (idempotent)."""
        study = self.store.get_study(study_id)
        if study.sweep_id and self.store.get_sweep(study.sweep_id).cancel_requested:
            return study  # a cancelled study queues nothing more
        for member in study.members:
            if member.role == "train" and member.state is RunState.SUCCEEDED:
                for analysis in study.plan["analyses"]:
                    self.store.add_study_analysis(study.id, member.label, analysis["name"],
                                                  {"name": analysis["name"], "params": analysis["params"]},
                                                  member.run_id, code_version=code_version())
        return self.store.get_study(study_id)

    def advance_studies(self) -> None:
        for study_id in self.store.study_ids_with_unfinished_runs():
            self.advance_study(study_id)

    def get_study(self, study_id: str) -> Study:
        return self.advance_study(study_id)

    def list_studies(self, limit: int = 100, offset: int = 0) -> tuple[list[Study], int]:
        return self.store.list_studies(limit=limit, offset=offset)

    def cancel_study(self, study_id: str) -> Study:
        study = self.store.get_study(study_id)
        if study.state.finished:
            raise Conflict(f"study {study_id} is {study.state.value}; there is nothing to cancel")
        if study.sweep_id:
            self.store.mark_sweep_cancelled(study.sweep_id)
        for member in study.members:
            if member.state is not None and not member.state.finished:
                try:
                    self.cancel_run(member.run_id)
                except InvalidTransition:
                    pass  # finished meanwhile
        return self.store.get_study(study_id)

    def study_report(self, study_id: str) -> dict[str, Any]:
        """The report data (engine.studies.report) of the study's runs so far."""
        from engine.studies.report import build_report

        study = self.get_study(study_id)
        return {"study_id": study.id, "state": study.state.value,
                **build_report(study.plan, self._study_entries(study))}

    def study_report_markdown(self, study_id: str) -> str:
        """The report as Markdown with the seed entry's figures (engine.studies.figures)
        of its finished training runs inlined as PNG data URIs: one self-contained document."""
        from engine.studies.figures import figures_markdown, write_figures
        from engine.studies.report import build_report, report_markdown

        study = self.get_study(study_id)
        entries = self._study_entries(study)
        report = {"study_id": study.id, "state": study.state.value, **build_report(study.plan, entries)}
        finished = [e for e in entries if e["state"] == RunState.SUCCEEDED.value]
        run_dirs = {m.label: self.data.run_dir(m.run_id) for m in study.members
                    if m.role == "train" and m.state is RunState.SUCCEEDED}
        if not run_dirs:
            return report_markdown(report)
        with tempfile.TemporaryDirectory(prefix="study-figures-") as tmp:
            figures = write_figures(tmp, finished, run_dirs=run_dirs)
            return report_markdown(report) + "\n" + figures_markdown(figures, inline_from=tmp)

    def study_report_csv(self, study_id: str) -> str:
        from engine.studies.report import report_csv

        return report_csv(self.study_report(study_id))

    def _study_entries(self, study: Study) -> list[dict[str, Any]]:
        plan_runs = {r["label"]: r for r in study.plan["runs"]}
        labels = list(plan_runs) or ["source"]
        entries = {label: {"label": label, "point": plan_runs.get(label, {}).get("point", {}),
                           "config": plan_runs.get(label, {}).get("config"), "state": "queued", "metrics": [],
                           "analyses": {a["name"]: None for a in study.plan["analyses"]}} for label in labels}
        for member in study.members:
            entry = entries[member.label]
            if member.state is None:  # deleted
                continue
            if member.role == "train":
                entry["state"] = member.state.value
                entry["metrics"] = self.store.metrics(member.run_id)
            else:
                result = self.data.run_dir(member.run_id) / "result.json"
                entry["analyses"][member.analysis] = json.loads(result.read_text()) if result.exists() else None
                if study.source_run_id:
                    entry["state"] = member.state.value
        return list(entries.values())

    # --- the data directory as a whole ---------------------------------------------------
    def backup(self, out: Path) -> BackupSummary:
        """The store and every run folder as one .tar.gz at `out` (jobs.backup), taken live."""
        return backup(self.data, out)

    # --- FORCE experiments (engine.force) ---------------------------------------------
    def submit_force(self, experiment: str, params: dict[str, Any] | None = None) -> Run:
        """Queue a FORCE experiment; its params are checked (and completed) by the engine."""
        return self.store.create_run(RunKind.FORCE, {"experiment": experiment,
                                                     "params": validate_force(experiment, params)},
                                     code_version=code_version())

    def finished_force_work(self, limit: int = 50) -> list[tuple[str, dict[str, Any], float, float]]:
        """(experiment, params, seconds, units of work) of the latest `limit` FORCE runs that
        succeeded on their first attempt: the paces a FORCE estimate goes by (a resumed
        attempt's time covers only what it ran). Params are validated again, so a run stored
        before a parameter was added gets its default; one that no longer validates (a
        parameter since removed) lends no pace."""
        runs, _ = self.store.list_runs(kind=RunKind.FORCE, state=RunState.SUCCEEDED, limit=limit)
        finished = []
        for run in runs:
            if run.attempt != 1 or not run.started_at or not run.finished_at:
                continue
            experiment = run.config.get("experiment")
            try:
                params = validate_force(experiment, run.config.get("params"))
            except InvalidRequest:
                continue
            finished.append((experiment, params, run.finished_at - run.started_at, force_work(experiment, params)))
        return finished

    # --- live events ------------------------------------------------------------------
    def changes(self, since: float) -> tuple[list[Run], list[tuple[str, float, dict]]]:
        """Runs and epochs that changed since `since`, for all runs at once (the dashboard's live feed)."""
        return self.store.changes_since(since)

    async def events(self, run_id: str, poll_s: float = EVENT_POLL_S) -> AsyncIterator[tuple[str, dict]]:
        """(event, data) pairs: the current state first, then each new epoch and
        each state change, until the run is finished (its last epochs included)."""
        run = self.store.get_run(run_id)
        yield "state", run_summary(run)
        last_epoch, last_state = 0, run.state
        while True:
            try:
                run = self.store.get_run(run_id)
            except RunNotFound:  # deleted while followed
                yield "state", {"id": run_id, "state": "deleted"}
                return
            for record in self.store.metrics(run_id, after_epoch=last_epoch):
                last_epoch = int(record["epoch"])
                yield "epoch", record
            if run.state is not last_state:
                last_state = run.state
                yield "state", run_summary(run)
            if run.state.finished:
                return
            await asyncio.sleep(poll_s)


def run_summary(run: Run) -> dict[str, Any]:
    return {"id": run.id, "state": run.state.value, "progress": run.progress, "error": run.error,
            "n_epochs": run.n_epochs}


def flatten(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested per-weight dicts become columns: w_norm.W_in, grad_ratio.W_out, ..."""
    flat: dict[str, Any] = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def list_analyses() -> list[dict[str, Any]]:
    """The analyses a finished run can be given, with their default parameters."""
    from engine.analyses import registry

    return [{"name": name, "description": getattr(spec, "description", ""),
             "defaults": getattr(spec, "defaults", {})}
            for name, spec in sorted(getattr(registry, "ANALYSES", {}).items())]


def validate_analysis(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Checked by the analysis's own spec in the engine's registry."""
    from engine.analyses import registry

    analyses = getattr(registry, "ANALYSES", {})
    if name not in analyses:
        raise InvalidRequest("name", f"unknown analysis {name!r}; known: {sorted(analyses)}")
    rejected = (getattr(registry, "AnalysisError", ValueError), ValueError, TypeError, KeyError)
    try:
        return analyses[name].validate(params)
    except rejected as exc:  # any refusal of user input is a 422, never a 500
        field = getattr(exc, "field", None)
        raise InvalidRequest(f"params.{field}" if field else "params", str(exc)) from exc


# --- FORCE experiments (engine.force) ------------------------------------------------------
def list_force_experiments() -> list[dict[str, Any]]:
    """The FORCE experiments with their complete default parameters."""
    from engine.force.experiments import EXPERIMENTS

    return [{"name": name, "description": spec.description, "defaults": spec.validate({})}
            for name, spec in sorted(EXPERIMENTS.items())]


def force_work(experiment: str, params: dict[str, Any]) -> float:
    """What a FORCE experiment's time scales with, for its validated params."""
    from engine.force.experiments import work

    return work(experiment, params)


def validate_force(experiment: str, params: dict[str, Any] | None) -> dict[str, Any]:
    from engine.force.experiments import validate

    try:
        return validate(experiment, params)
    except ConfigError as exc:  # ExperimentError is one; fields are named as in the request
        raise InvalidRequest(exc.field if exc.field == "experiment" else f"params.{exc.field}", exc.message) from exc
