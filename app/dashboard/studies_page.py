"""Studies: the seed's experiments as presets (engine.studies) launched in one
click, the launched studies with live progress, and one study's report laid
out like the study (`/studies?id=STUDY`)."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import textwrap
from collections import Counter
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from app.api.deps import Services
from app.dashboard import estimate, layout, plots, study_plots, time_left
from app.dashboard.live import LiveFeed, News
from app.dashboard.run_files import RunFiles
from engine.analyses.coupling import DEFAULT_FACTORS
from engine.config import TIERS
from engine.studies import PRESETS, StudyError, expand
from jobs.models import InvalidRequest, JobsError, Run, RunKind, RunState
from jobs.studies import Study

DEFAULT = "preset's"
MAX_STUDIES = 200
MAX_HISTOGRAM_RUNS = len(plots.SERIES_COLORS)  # one colour per overlaid run
NOT_YET = "written after its first epoch"  # why a run's rates or weights are missing
TITLE_LINE = 60  # characters: about what a half-width figure's title holds
STUDY_COLUMNS = ["study", "preset", "state", "progress", "runs", "created", "source", "report"]


def _member_counts(study) -> str:
    """"6 of 6 runs launched: 2 running, 4 queued" (it read "6 of 6 runs queued" with two running)."""
    states = Counter(m.state.value if m.state else "deleted" for m in study.members)
    counts = ", ".join(f"{n} {state}" for state, n in sorted(states.items(), key=lambda kv: STATE_ORDER.get(kv[0], 9)))
    return f"{len(study.members)} of {study.expected_runs} runs launched" + (f": {counts}" if counts else "")


STATE_ORDER = {"running": 0, "queued": 1, "succeeded": 2, "failed": 3, "cancelled": 4, "deleted": 5}


def _link(href: str, text: str) -> str:
    return f'<a href="{html.escape(href)}">{html.escape(text)}</a>'


def _describe(preset) -> str:
    """A preset's description with what it trains, analyses and its defaults."""
    facts = []
    if preset.grid:
        facts.append("trains " + " × ".join(f"{k} {v}" for k, v in preset.grid.items()))
        facts.append("defaults " + ", ".join(f"{k}={v}" for k, v in preset.base.items()))
    else:
        facts.append("analyses a trained source run")
    for analysis in preset.analyses:
        params = ", ".join(f"{k}={v}" for k, v in analysis.params.items())
        facts.append(f"{analysis.name}" + (f" ({params})" if params else ""))
    return (f"<b>{html.escape(preset.name)}</b> · {html.escape(preset.title)}"
            f"<div class='muted'>{html.escape(preset.description)}</div>"
            f"<div class='muted'><code>{html.escape(' · '.join(facts))}</code></div>")


def study_row(study: Study) -> dict[str, Any]:
    done = sum(1 for m in study.members if m.state is None or m.state.finished)
    return {"study": study.id, "preset": study.name, "state": study.state.value,
            "progress": round(100 * study.progress), "runs": f"{done}/{study.expected_runs}",
            "created": dt.datetime.fromtimestamp(study.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            "source": study.source_run_id or "", "report": f"/studies?id={study.id}"}


# --- the list of presets and studies ------------------------------------------------------
class StudiesPage(param.Parameterized):
    def __init__(self, services: Services, feed: LiveFeed, **params):
        super().__init__(**params)
        self.jobs, self.feed, self.workers = services.jobs, feed, services.settings.workers
        self.status = layout.status_line()
        # a preset launches only after its cost (runs, epochs, time here) was shown and confirmed
        self.pending: str | None = None
        self.confirm_text = pn.pane.HTML(sizing_mode="stretch_width", margin=(0, 10))
        self.confirm_button = pn.widgets.Button(label="Launch", button_type="danger", width=200)
        self.confirm_button.on_click(lambda _event: self.confirm())
        back = pn.widgets.Button(name="Don't launch", button_type="default", width=120)
        back.on_click(lambda _event: self.dismiss())
        self.confirmation = pn.Column(self.confirm_text, pn.Row(self.confirm_button, back), visible=False,
                                      sizing_mode="stretch_width", css_classes=["figure", "confirmation"])
        self.tier = pn.widgets.Select(name="tier", options=[DEFAULT, *TIERS], value=DEFAULT, width=160)
        self.epochs = pn.widgets.IntInput(name="epochs (0: preset's)", value=0, start=0, width=160)
        self.overrides = pn.widgets.TextAreaInput(
            name="overrides (JSON)", height=90, sizing_mode="stretch_width",
            placeholder='{"seed": [42], "n_e": 40, "n_i": 10, "samples": 100}')
        self.source = pn.widgets.Select(name="source run (inference presets)", options=self._sources(),
                                        sizing_mode="stretch_width")
        self.table = pn.widgets.Tabulator(
            self._frame(), show_index=False, disabled=True, sizing_mode="stretch_width",
            layout="fit_data_stretch", pagination="local", page_size=12,
            formatters={"progress": {"type": "progress", "legend": True, "color": "#2b6cb0"},
                        "study": {"type": "link", "urlPrefix": "/studies?id=", "target": "_self"},
                        "report": {"type": "link", "target": "_self", "label": "report"},
                        "source": {"type": "link", "urlPrefix": "/run?id=", "target": "_self"}},
            configuration={"placeholder": "No studies yet: launch a preset above."})
        if pn.state.curdoc:
            key = feed.subscribe(pn.state.curdoc, self._on_news)
            pn.state.on_session_destroyed(lambda _ctx: feed.unsubscribe(key))

    def _frame(self) -> pd.DataFrame:
        studies, _ = self.jobs.list_studies(limit=MAX_STUDIES)
        return pd.DataFrame([study_row(s) for s in studies], columns=STUDY_COLUMNS)

    def _sources(self) -> dict[str, str]:
        runs, _ = self.jobs.list_runs(kind=RunKind.TRAIN, state=RunState.SUCCEEDED, limit=200)
        return {"(none)": "", **{f"{r.id} · {r.config.get('arch')} seed {r.config.get('seed')} · "
                                 f"{r.config.get('tier')} · {r.n_epochs} epochs": r.id for r in runs}}

    def _on_news(self, news: News) -> None:
        if not news.runs:
            return
        frame = self._frame()
        if not frame.equals(self.table.value):
            self.table.value = frame
        if any(r.kind is RunKind.TRAIN and r.state is RunState.SUCCEEDED for r in news.runs.values()):
            value = self.source.value
            self.source.options = self._sources()
            self.source.value = value if value in self.source.options.values() else ""

    def _launch_overrides(self, preset) -> dict[str, Any]:
        text = self.overrides.value.strip()
        try:
            overrides = json.loads(text) if text else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"overrides are not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})") from None
        if not isinstance(overrides, dict):
            raise ValueError('overrides must be a JSON object, e.g. {"seed": [42]}')
        if preset.grid:  # tier and epochs are config fields: only training presets take them
            if self.tier.value != DEFAULT:
                overrides.setdefault("tier", self.tier.value)
            if self.epochs.value:
                overrides.setdefault("epochs", self.epochs.value)
        return overrides

    def calibration(self) -> estimate.Calibration:
        runs, _ = self.jobs.list_runs(kind=RunKind.TRAIN, limit=estimate.RECENT_RUNS)
        last = self.jobs.last_epochs([r.id for r in runs])
        return estimate.Calibration.from_epochs((r.config, last[r.id]) for r in runs if r.id in last)

    def ask(self, name: str) -> None:
        """Show what the preset would queue and how long it would take; launch on confirm."""
        preset = PRESETS[name]
        try:
            plan = expand(name, self._launch_overrides(preset))
        except StudyError as exc:  # named as the API names it
            layout.say(self.status, f"Not launched ({html.escape(name)}): <b>overrides.{html.escape(exc.field)}"
                                    f"</b> {html.escape(exc.message)}", "danger")
            return
        except ValueError as exc:
            layout.say(self.status, f"Not launched: {html.escape(str(exc))}", "danger")
            return
        if preset.needs_source and not self.source.value:
            layout.say(self.status, f"Not launched ({html.escape(name)}): <b>source_run_id</b> is needed: pick "
                                    "the trained run it analyses under 'source run'.", "danger")
            return
        configs = [r.config for r in plan.runs]
        cost = estimate.estimate(configs, self.calibration(), self.workers)
        if configs:
            first = configs[0]
            what = (f"<b>{cost.runs} training run(s)</b>, <b>{cost.epochs} epochs</b> in all "
                    f"({', '.join(sorted({str(c['epochs']) for c in configs}))} each) on the "
                    f"<b>{html.escape(str(first['tier']))}</b> tier, {first['n_e']} E / {first['n_i']} I cells, "
                    f"{first['t_ms']} ms trials, {html.escape(str(first['backend']))} backend")
        else:
            what = f"<b>{len(plan.analyses)} analysis run(s)</b> of the source run"
        self.pending = name
        self.confirm_text.object = (f"<p><b>Launch {html.escape(name)}?</b> It queues {what}.</p>"
                                    f"<p>Estimated time: <b>{html.escape(cost.describe())}</b>.</p>")
        self.confirm_button.label = f"Launch {name} now"
        self.confirmation.visible = True

    def confirm(self) -> None:
        name, self.pending = self.pending, None
        self.confirmation.visible = False
        if name is not None:
            self.launch(name)

    def dismiss(self) -> None:
        self.pending, self.confirmation.visible = None, False
        layout.say(self.status, "Not launched.", "info")

    def launch(self, name: str) -> None:
        preset = PRESETS[name]
        try:
            overrides = self._launch_overrides(preset)
        except ValueError as exc:
            layout.say(self.status, f"Not launched: {html.escape(str(exc))}", "danger")
            return
        source = (self.source.value or None) if preset.needs_source else None
        try:
            study = self.jobs.submit_study(name, overrides, source)
        except InvalidRequest as exc:
            layout.say(self.status, f"Not launched ({html.escape(name)}): <b>{html.escape(str(exc))}</b>", "danger")
            return
        except JobsError as exc:
            layout.say(self.status, f"Not launched ({html.escape(name)}): {html.escape(str(exc))}", "danger")
            return
        layout.say(self.status, f"Queued study {_link(f'/studies?id={study.id}', study.id)} ({name}, "
                                f"{study.expected_runs} runs).")
        self.table.value = self._frame()

    def _preset_row(self, preset) -> pn.Row:
        button = pn.widgets.Button(name=f"Launch {preset.name}", button_type="primary", width=150, align="center")
        button.on_click(lambda _event: self.ask(preset.name))
        return pn.Row(pn.pane.HTML(_describe(preset), sizing_mode="stretch_width", margin=(2, 10)), button,
                      sizing_mode="stretch_width", css_classes=["figure"])

    def view(self) -> pn.Column:
        settings = layout.section(
            "Launch settings", pn.Row(self.tier, self.epochs), self.overrides, self.source,
            pn.pane.HTML("<p class='muted'>Tier and epochs apply to presets that train. Overrides: a grid "
                         "axis as a list (<code>\"seed\": [42]</code>), any config field, or an analysis "
                         "parameter. Inference presets run on the source run.</p>", sizing_mode="stretch_width"),
            width=420, sizing_mode=None)
        presets = layout.section("Presets", self.confirmation, *(self._preset_row(p) for p in PRESETS.values()))
        return layout.page("Studies", "/studies", pn.Row(settings, presets, sizing_mode="stretch_width"),
                           layout.section("Launched studies", self.table), status=self.status)


# --- one study ---------------------------------------------------------------------------
class StudyPage(param.Parameterized):
    report = param.Dict(default={})
    metrics = param.Dict(default={}, doc="run label -> epoch records (training runs)")
    metric = param.Selector(default="rate_total_hz", objects=list(plots.COUPLING_METRICS))

    def __init__(self, services: Services, feed: LiveFeed, study: Study, **params):
        super().__init__(**params)
        self.jobs, self.study = services.jobs, study
        settings = getattr(services, "settings", None)  # the general worker slots the runs share
        self.workers = settings.workers if settings is not None else 1
        self.plan = study.plan
        self.labels = [r["label"] for r in self.plan["runs"]]
        self.archs = [r["config"]["arch"] for r in self.plan["runs"]]
        self.colors = study_plots.run_colors(self.labels, self.archs)
        self.markers, self.dashes = study_plots.run_marks(self.labels, self.archs)
        self.files = RunFiles(self.jobs)
        self._refreshing, self._again = False, False
        self.header = pn.pane.HTML(sizing_mode="stretch_width", margin=(0, 10))
        self.members = pn.pane.HTML(sizing_mode="stretch_width", margin=(0, 10))
        self.seed_table = pn.widgets.Tabulator(pd.DataFrame(), show_index=False, disabled=True,
                                               sizing_mode="stretch_width", **plots.SEED_TABLE_LAYOUT)
        self.tables = pn.Column(sizing_mode="stretch_width")
        self._apply(*self._read())
        if pn.state.curdoc:
            key = feed.subscribe(pn.state.curdoc, self._on_news)
            pn.state.on_session_destroyed(lambda _ctx: feed.unsubscribe(key))

    # --- data --------------------------------------------------------------------------
    def _read(self) -> tuple[Study, dict, dict, tuple]:
        study = self.jobs.get_study(self.study.id)
        report = self.jobs.study_report(study.id)
        metrics = {m.label: self.jobs.metrics(m.run_id) for m in study.members
                   if m.role == "train" and m.state is not None}
        return study, report, {label: metrics.get(label, []) for label in self.labels}, self._read_queue(study)

    def _read_queue(self, study: Study) -> tuple[dict[str, Run], list[tuple[Run, list[dict]]]]:
        """For the time left: the study's unfinished training runs by label, and the server's
        other training runs that hold a slot or wait for one, with their last epoch (one
        query for all: their pace is that epoch's, as in the Runs table)."""
        if study.state.finished or self.workers == 0:
            return {}, []
        labels = {m.run_id: m.label for m in study.members if m.role == "train" and m.state is not None}
        waiting = [run for state in (RunState.RUNNING, RunState.QUEUED)
                   for run in self.jobs.list_runs(state=state, kind=RunKind.TRAIN, limit=10_000)[0]]
        last = self.jobs.last_epochs([run.id for run in waiting if run.id not in labels])
        mine = {labels[run.id]: run for run in waiting if run.id in labels}
        others = [(run, [last[run.id]] if run.id in last else []) for run in waiting if run.id not in labels]
        return mine, others

    def _apply(self, study: Study, report: dict, metrics: dict, queue: tuple) -> None:
        self.study = study
        self.metrics = metrics
        self.report = report
        self.queue = queue
        self._render_header()
        rows = report.get("seed_table")
        if rows is not None:
            frame = pd.DataFrame(rows).drop(columns=["slope_window"], errors="ignore")
            self.seed_table.value = frame.round(3)
        if "seed_table" not in report:
            self._render_tables()

    def _relevant(self, news: News) -> bool:
        ids = set(self.study.run_ids)
        trained = {m.run_id for m in self.study.members if m.role == "train"}
        # any training run that starts, ends or is queued moves an unfinished study's time left
        return bool(ids & (set(news.runs) | set(news.epochs))) or any(
            r.source_run_id in trained or (r.kind is RunKind.TRAIN and not self.study.state.finished)
            for r in news.runs.values() if r.id not in ids)

    def _on_news(self, news: News) -> None:
        if self._relevant(news):
            pn.state.execute(self.refresh)

    async def refresh(self) -> None:
        """Re-read the study (one read at a time; news during a read asks for another)."""
        if self._refreshing:
            self._again = True
            return
        self._refreshing = True
        try:
            while True:
                self._again = False
                try:
                    self._apply(*await asyncio.to_thread(self._read))
                except JobsError:
                    return
                if not self._again:
                    return
        finally:
            self._refreshing = False

    def _time_left(self) -> list[tuple[str, str]]:
        """("time left", ...) while the study's runs train: a 600-epoch study at its own scale
        said "41 %" for days."""
        if self.study.state.finished:
            return []
        if self.workers == 0:  # a queue-only server trains nothing
            return []
        members = self._train_members()
        runs, others = self.queue
        # a run not launched yet waits last; a member whose state is None was deleted
        entries = time_left.queue_entries(
            [(r["config"], runs.get(r["label"]), members[r["label"]].state if r["label"] in members
              else RunState.QUEUED, self.metrics.get(r["label"], [])) for r in self.plan["runs"]], others)
        seconds = time_left.study_seconds_left(entries, self.workers)
        if seconds is None:
            return []
        queue = ", in queue order with the server's other training runs" if others else ""
        return [("time left", f"{time_left.describe(seconds)} for its training at its runs' pace on this server "
                              f"({self.workers} at once{queue}; analyses come on top)")]

    def _train_members(self) -> dict[str, Any]:
        return {m.label: m for m in self.study.members if m.role == "train"}

    def _npz(self, label: str, name: str) -> tuple[dict[str, np.ndarray] | None, int | None]:
        """A member run's artifacts/NAME.npz and the epoch it is from (None: final). A run still
        training rewrites rates.npz after every epoch (a 100-epoch study's figures stood empty
        for days)."""
        member = self._train_members().get(label)
        if member is None:  # queued, cancelled and failed runs too: a restart requeues a run mid-study
            return None, None
        arrays = self.files.npz(member.run_id, name)
        if arrays is None:
            return None, None
        final = member.state is RunState.SUCCEEDED or "epoch" not in arrays
        return arrays, None if final else int(arrays["epoch"])

    def _end_weights(self, label: str) -> tuple[dict[str, np.ndarray] | None, int | None]:
        """The run's final weights, or until it has them its latest checkpoint's, with its epoch."""
        final, _ = self._npz(label, "weights_final")
        member = self._train_members().get(label)
        if final is not None or member is None:
            return final, None
        latest = self.files.latest_weights(member.run_id)
        return (None, None) if latest is None else latest

    @staticmethod
    def _epochs_note(epochs: dict[str, int | None]) -> str:
        """A title's second line, "ping-seed42 at epoch 94", for the runs whose figures are not
        final yet (on one line with the title, three seeds ran past the plot's width)."""
        training = [f"{label} at epoch {epoch}" for label, epoch in epochs.items() if epoch is not None]
        return "\n" + textwrap.fill(", ".join(training), TITLE_LINE, break_on_hyphens=False) if training else ""

    # --- header and tables ---------------------------------------------------------------
    def _render_header(self) -> None:
        study, sid = self.study, self.study.id
        preset = PRESETS[study.name]
        trained = [m.run_id for m in study.members if m.role == "train"]
        links = [_link(f"/api/studies/{sid}/report.md", "report.md"),
                 _link(f"/api/studies/{sid}/report.csv", "report.csv"),
                 _link(f"/api/studies/{sid}/report", "report.json")]
        if trained:
            links.insert(0, _link("/compare?runs=" + ",".join(trained[:24]), f"Compare the {len(trained)} "
                                  "training runs →"))
        facts = [("preset", f"{study.name} · {preset.title}"), ("state", study.state.value),
                 ("progress", f"{100 * study.progress:.0f} % ({_member_counts(study)})"),
                 *self._time_left(),
                 ("created", dt.datetime.fromtimestamp(study.created_at).strftime("%Y-%m-%d %H:%M:%S")),
                 ("overrides", json.dumps(self.plan["overrides"]) or "none")]
        if study.source_run_id:
            facts.append(("source run", _link(f"/run?id={study.source_run_id}", study.source_run_id)))
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{v if k == 'source run' else html.escape(str(v))}"
                        f"</td></tr>" for k, v in facts)
        self.header.object = (f"<p class='muted'>{html.escape(preset.description)}</p>"
                              f"<table class='kv'>{cells}</table><p>{' · '.join(links)}</p>")
        rows = "".join(
            f"<tr><td>{_link(f'/run?id={m.run_id}', m.run_id)}</td><td>{html.escape(m.label)}</td>"
            f"<td>{m.role}{(' · ' + html.escape(m.analysis)) if m.analysis else ''}</td>"
            f"<td>{m.state.value if m.state else 'deleted'}</td></tr>" for m in study.members)
        self.members.object = ("<table class='kv'><tr><th>run</th><th>label</th><th>role</th><th>state</th></tr>"
                               f"{rows}</table>")

    def _render_tables(self) -> None:
        """Inference studies: each analysis's summary and cells, as the Markdown export has them."""
        items = []
        for analysis in self.report.get("analyses", []):
            summary = analysis["summary"]
            if summary and "diagonal" not in summary:
                flat = {k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in summary.items()}
                items.append(_table(pd.DataFrame([flat])))
            if analysis["cells"]:
                items.append(_table(pd.DataFrame(analysis["cells"]).round(4)))
        self.tables.objects = items or [pn.pane.HTML("<p class='muted'>No results yet.</p>")]

    # --- figures -------------------------------------------------------------------------
    def _figure(self, build, frame, name: str, *deps: str) -> pn.Column:
        """A live figure: rebuilt from `build` when any of `deps` changes."""
        streams = [hv.streams.Params(self, list(deps or ("report",)))]
        return plots.figure_panel(hv.DynamicMap(lambda **_: build(), streams=streams), build, frame,
                                  f"{self.study.id}-{name}")

    def _trajectory(self, column: str, title: str, ylabel: str, logy: bool = False):
        frame = study_plots.wide_frame(self.metrics, column)
        element = plots.trajectories(frame, {label: label for label in self.labels}, title=title, ylabel=ylabel,
                                     colors=self.colors, markers=self.markers, dashes=self.dashes, logy=logy)
        return element.opts(show_legend=len(self.labels) <= MAX_HISTOGRAM_RUNS, legend_position="right")

    def _budget_rows(self) -> tuple[list[dict], bool]:
        """The spike budget's rows, and whether they are the study's so far (runs still training)."""
        if "spike_budget_so_far" in self.report:
            return self.report["spike_budget_so_far"], True
        return self.report.get("spike_budget", []), False

    def _training_sections(self) -> list:
        f, grid = self._figure, _grid
        wide = lambda column: (lambda: study_plots.wide_frame(self.metrics, column))  # noqa: E731
        trainable = self.plan["runs"][0]["config"].get("trainable", [])
        curves = [("test_acc", "Test accuracy", "accuracy (%)", False), ("test_loss", "Test loss", "cross-entropy",
                                                                          False),
                  ("rate_e_hz", "E rate", "rate (Hz)", False), ("rate_i_hz", "I rate", "rate (Hz)", False)]
        weights = [(f"w_norm.{n}", f"||{n}||_F", "Frobenius norm", False) for n in trainable] + \
                  [(f"grad_ratio.{n}", f"||grad|| / ||{n}||", "ratio", True) for n in trainable]
        figure = lambda c, t, y, log: f(lambda: self._trajectory(c, t, y, log), wide(c),  # noqa: E731
                                        c.replace(".", "-"), "metrics")
        budget = f(lambda: study_plots.spike_budget(*self._budget_rows()),
                   lambda: study_plots.spike_budget_frame(self._budget_rows()[0]), "spike-budget")
        paths = lambda: study_plots.accuracy_vs_rate_runs(self.metrics, self.colors, self.dashes)  # noqa: E731
        return [
            layout.section("Seed table (final epoch; slopes over the last 10 epochs)", self.seed_table,
                           grid(budget, f(paths, wide("rate_e_hz"), "accuracy-vs-rate", "metrics"))),
            layout.section("Trajectories", grid(*(figure(*c) for c in curves))),
            layout.section("Weights", grid(*(figure(*c) for c in weights))),
            layout.section("Per-cell rates and weight values (final, or each run's latest epoch)",
                           grid(*self._histogram_figures())),
        ]

    def _histogram_figures(self) -> list:
        """Per-cell E rates per arch and the first run of each arch's weights: final, or for
        a run still training its latest epoch (the title says which)."""
        archs = list(dict.fromkeys(self.archs))
        items = []
        for arch in archs:
            labels = [lb for lb, a in zip(self.labels, self.archs) if a == arch][:MAX_HISTOGRAM_RUNS]
            read = lambda labels=labels: {lb: self._npz(lb, "rates") for lb in labels}  # noqa: E731
            samples = lambda read=read: {lb: d["rate_e_hz"] for lb, (d, _) in read().items()  # noqa: E731
                                         if d is not None}

            def build(arch=arch, labels=labels, read=read):
                latest = read()
                when = self._epochs_note({lb: epoch for lb, (d, epoch) in latest.items() if d is not None})
                return plots.histograms({lb: d["rate_e_hz"] for lb, (d, _) in latest.items() if d is not None},
                                        labels, title=f"Per-cell E rates, {arch.upper()} (test set){when}",
                                        xlabel="rate (Hz)", missing=NOT_YET)
            items.append(self._figure(build, lambda samples=samples: plots.histogram_frame(samples()),
                                      f"cell-rates-{arch}"))
        firsts = {arch: next(lb for lb, a in zip(self.labels, self.archs) if a == arch) for arch in archs}
        # one figure per arch: the seed recipe starts PING's and COBA's weights at different
        # scales (W_in 1.2 vs 0.3, W_out 500 vs 100), so one "init" cannot stand for both
        for weight in ("W_in", "W_out"):
            labels = plots.WEIGHT_LABELS if weight == "W_in" else plots.WEIGHT_LABELS[:2]
            for arch, label in firsts.items():
                def read(weight=weight, label=label) -> tuple[dict[str, np.ndarray], int | None]:
                    init, _ = self._npz(label, "weights_init")
                    end, epoch = self._end_weights(label)
                    return plots.weight_series(weight, init, end), epoch

                def build(weight=weight, arch=arch, label=label, read=read, labels=labels):
                    series, epoch = read()
                    when = "" if epoch is None else f" at epoch {epoch}"
                    colors = (plots.WEIGHT_COLORS[0], study_plots.ARCH_COLORS.get(arch, plots.E_COLOR),
                              plots.WEIGHT_COLORS[2])
                    return plots.histograms(series, labels, bins=40, logy=True, colors=colors, missing=NOT_YET,
                                            xlabel="weight",
                                            title=f"{weight} values, init vs end, {arch.upper()} ({label}{when})")
                items.append(self._figure(build, lambda read=read: plots.histogram_frame(read()[0]),
                                          f"{weight}-values-{arch}"))
        return items

    def _analysis(self, name: str) -> dict:
        return next((a for a in self.report.get("analyses", []) if a["name"] == name),
                    {"summary": None, "cells": []})

    def _params(self, name: str) -> dict:
        return next((a["params"] for a in self.plan["analyses"] if a["name"] == name), {})

    def _preset_sections(self) -> list:
        f, grid, sections = self._figure, _grid, []
        report = lambda key: self.report.get(key) or {}  # noqa: E731
        if "rate_vs_gamma" in self.plan["report"]:
            sections.append(layout.section("E rate vs gamma frequency", grid(
                f(lambda: study_plots.rate_vs_gamma(report("rate_vs_gamma")),
                  lambda: study_plots.rate_vs_gamma_frame(report("rate_vs_gamma")), "rate-vs-gamma"))))
        if "dt_audit" in self.plan["report"]:
            dt_figure = lambda column, ylabel, title: f(  # noqa: E731
                lambda: study_plots.dt_audit(report("dt_audit"), self.labels, self.colors, column, ylabel, title),
                lambda: study_plots.dt_frame(report("dt_audit")), f"dt-{column}")
            sections.append(layout.section("dt audit (each trained run evaluated at every dt)", grid(
                dt_figure("rate_e_hz", "E rate (Hz)", "E rate vs evaluation dt"),
                dt_figure("test_acc", "accuracy (%)", "Accuracy vs evaluation dt"),
                dt_figure("cycle_ms", "gamma cycle (ms)", "Gamma cycle period vs evaluation dt"),
                dt_figure("rate_i_hz", "I rate (Hz)", "I rate vs evaluation dt"))))
        if "ei_grid" in self.plan["report"]:
            ei, ie = self.plan["grid"].get("ei_strength", []), self.plan["grid"].get("ie_strength", [])
            sections.append(layout.section("E↔I training grid", f(
                lambda: study_plots.ei_grid(report("ei_grid"), ei, ie),
                lambda: study_plots.ei_grid_frame(report("ei_grid"), ei, ie), "ei-grid")))
        if "coupling" in self.plan["report"]:
            sections.append(self._coupling_section())
        names = [a["name"] for a in self.plan["analyses"]]
        if "phase_shuffle" in names:
            summary = lambda: self._analysis("phase_shuffle")["summary"]  # noqa: E731
            sections.append(layout.section("Phase shuffle: E-rate release", grid(
                f(lambda: study_plots.phase_shuffle(summary()), lambda: study_plots.phase_shuffle_frame(summary()),
                  "phase-shuffle"))))
        if "drop_add_spikes" in names:
            cells = lambda: self._analysis("drop_add_spikes")["cells"]  # noqa: E731
            frame = lambda: study_plots.drop_add_frame(cells())  # noqa: E731
            sections.append(layout.section("Dropping and adding E spikes", grid(
                f(lambda: study_plots.drop_add(cells(), "test_acc", "accuracy (%)", "Drop / add: accuracy"),
                  frame, "drop-add-accuracy"),
                f(lambda: study_plots.drop_add(cells(), "rate_e_delivered_hz", "delivered E rate (Hz)",
                                               "Drop / add: delivered E rate"), frame, "drop-add-rate"),
                f(lambda: study_plots.drop_add(cells(), "pattern_change", "pattern change",
                                               "Drop / add: spike-pattern change"), frame, "drop-add-pattern"),
                f(lambda: study_plots.drop_add(cells(), "rate_i_hz", "I rate (Hz)", "Drop / add: I rate"),
                  frame, "drop-add-i"))))
        if "fi_curve" in names:
            cells = lambda: self._analysis("fi_curve")["cells"]  # noqa: E731
            sections.append(layout.section("f-I curves, loop open and closed", grid(
                f(lambda: study_plots.fi_curves(cells()), lambda: study_plots.fi_frame(cells()), "fi-rates"),
                f(lambda: study_plots.fi_accuracy(cells()), lambda: study_plots.fi_frame(cells()),
                  "fi-accuracy"))))
        if "loop_transfer" in names:
            moved = lambda: self._analysis("loop_transfer")["cells"]  # noqa: E731
            table = lambda: pd.DataFrame(moved())  # noqa: E731
            sections.append(layout.section("Inference-time loop transfer (a fresh loop in the trained run)", grid(
                f(lambda: study_plots.loop_transfer(moved(), study_plots.LOOP_TRANSFER_RATES, "rate (Hz)",
                                                    "Loop transfer: E and I rate"), table, "transfer-rates"),
                f(lambda: study_plots.loop_transfer(moved(), study_plots.LOOP_TRANSFER_ACC, "accuracy (%)",
                                                    "Loop transfer: accuracy"), table, "transfer-accuracy"))))
        return sections

    def _coupling_section(self) -> pn.Column:
        factors = self._params("coupling_sweep").get("factors", list(DEFAULT_FACTORS))
        cells = lambda: (self.report.get("coupling") or {}).get("cells", [])  # noqa: E731
        frame = lambda: pd.DataFrame(cells())  # noqa: E731
        metric = pn.widgets.RadioButtonGroup.from_param(
            self.param.metric, options={label: key for key, label in plots.COUPLING_METRICS.items()},
            button_type="default")
        return layout.section(
            "Coupling sweep (W_ei × W_ie) and its diagonal",
            pn.Row(pn.pane.HTML("<b>colour:</b>", align="center"), metric),
            self._figure(lambda: plots.coupling_heatmap(cells(), factors, self.metric), frame, "coupling",
                         "report", "metric"),
            _grid(self._figure(lambda: plots.coupling_diagonal_rates(cells(), factors), frame, "diagonal-rates"),
                  self._figure(lambda: plots.coupling_diagonal_accuracy(cells(), factors), frame,
                               "diagonal-accuracy")))

    # --- view ----------------------------------------------------------------------------
    def view(self) -> pn.Column:
        preset = PRESETS[self.study.name]
        top = pn.Row(layout.section("Study", self.header, width=560, sizing_mode=None),
                     layout.section("Member runs", self.members), sizing_mode="stretch_width")
        body = [top]
        if self.plan["runs"]:
            body += self._training_sections()
        body += self._preset_sections()
        if not self.plan["runs"]:
            body.append(layout.section("Result tables", self.tables))
        elif "per_run" in self.report or preset.analyses:
            per_run = pn.widgets.Tabulator(self._per_run_frame(), show_index=False, disabled=True,
                                           sizing_mode="stretch_width", layout="fit_data_stretch")
            self.param.watch(lambda _e: setattr(per_run, "value", self._per_run_frame()), "report")
            body.append(layout.section("Per-run inference (rate_vs_gamma / dt_audit rows)", per_run))
        return layout.page(f"Study {self.study.id}: {preset.name}", "/studies", *body)

    def _per_run_frame(self) -> pd.DataFrame:
        if "dt_audit" in self.report:
            return pd.DataFrame(self.report["dt_audit"]["rows"]).round(3)
        return pd.DataFrame([{"label": k, **v} for k, v in self.report.get("per_run", {}).items()]).round(3)


def _grid(*items) -> pn.GridBox:
    return pn.GridBox(*items, ncols=2, sizing_mode="stretch_width")


def _table(frame: pd.DataFrame) -> pn.widgets.Tabulator:
    return pn.widgets.Tabulator(frame, show_index=False, disabled=True, sizing_mode="stretch_width",
                                layout="fit_data_stretch", pagination="local", page_size=15)


def create(services: Services, feed: LiveFeed) -> pn.Column:
    study_id = layout.query_param("id")
    if not study_id:
        return StudiesPage(services, feed).view()
    try:
        study = services.jobs.get_study(study_id)
    except JobsError:
        return layout.page("Study not found", "/studies", layout.section(
            "Nothing here", pn.pane.HTML(f"<p>There is no study <code>{html.escape(study_id)}</code>. "
                                         f'Pick one on the <a href="/studies">Studies</a> page.</p>')))
    return StudyPage(services, feed, study).view()
