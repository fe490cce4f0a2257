"""Coupling sweep: the W_ei x W_ie heatmap of a trained run, filling in live as
the sweep's cells finish; a click on a cell shows its raster and rates."""

from __future__ import annotations

import asyncio
import html
import json
from functools import partial

import holoviews as hv
import pandas as pd
import panel as pn
import param

from app.api.deps import Services
from app.dashboard import layout, plots
from app.dashboard.live import LiveFeed, News
from engine.analyses.coupling import DEFAULT_FACTORS, unstable_cells
from engine.stability import UNSTABLE_STEP_FACTOR
from jobs.models import InvalidRequest, JobsError, Run, RunKind, RunState

ANALYSIS = "coupling_sweep"


class CouplingPage(param.Parameterized):
    metric = param.Selector(default="rate_total_hz", objects=list(plots.COUPLING_METRICS))
    result = param.Dict(default={})
    cell_raster = param.Dict(default=None, allow_None=True)

    def __init__(self, services: Services, feed: LiveFeed, run: Run, analysis: Run | None, **params):
        super().__init__(**params)
        self.jobs, self.run, self.analysis = services.jobs, run, analysis
        self.status = layout.status_line()
        self.progress = pn.pane.HTML(margin=(0, 10))
        self.cell_info = pn.pane.HTML('<p class="muted">Click a cell to see its raster.</p>',
                                      sizing_mode="stretch_width")
        self.factors = pn.widgets.TextInput(label="multipliers (both axes)", width=320,
                                            value=", ".join(f"{f:g}" for f in DEFAULT_FACTORS))
        self.samples = pn.widgets.IntInput(label="test images (0: all)", value=0, start=0, width=150)
        self.launch_button = pn.widgets.Button(label="Run coupling sweep", button_type="primary", align="end")
        self.launch_button.on_click(self.launch)
        self._load()
        if analysis is not None:  # the fields show the sweep on screen, not the defaults
            self.factors.value = ", ".join(f"{f:g}" for f in self._factors())
            self.samples.value = analysis.config.get("params", {}).get("samples") or 0
        if pn.state.curdoc:
            key = feed.subscribe(pn.state.curdoc, self._on_news)
            pn.state.on_session_destroyed(lambda _ctx: feed.unsubscribe(key))

    # --- data --------------------------------------------------------------------------
    def _load(self) -> None:
        if self.analysis is None:
            self.result, self.progress.object = {}, '<p class="muted">No sweep of this run yet: launch one.</p>'
            return
        try:
            result = json.loads(self.jobs.artifact_path(self.analysis.id, "result.json").read_text())
        except (JobsError, json.JSONDecodeError):
            result = {}  # queued: the result file is written when the first cell is done
        with param.discard_events(self):
            self.result = result
        self.param.trigger("result")  # also when unchanged: the factors may come from a new sweep
        # before its first cell the sweep has no result file: its size is the request's
        done, total = len(self.result.get("cells", [])), self.result.get("total") or len(self._factors()) ** 2
        # a sweep of a run still training used its latest checkpoint: say which epoch
        epoch = self.result.get("weights_epoch")
        weights = f", weights of epoch {epoch} (latest checkpoint)" if epoch is not None else ""
        self.progress.object = (f"<p>Sweep <a href=\"/run?id={self.analysis.id}\">{self.analysis.id}</a>: "
                                f"<b>{self.analysis.state.value}</b>, {done} of {total} cells{weights}</p>"
                                + unstable_note(self.result))

    def _on_news(self, news: News) -> None:
        if self.analysis is not None and self.analysis.id in news.runs:
            self.analysis = news.runs[self.analysis.id]
            self._load()

    def _factors(self) -> list[float]:
        """The sweep's multipliers: from its result, its request, or the form."""
        if self.result.get("factors"):
            return self.result["factors"]
        if self.analysis is not None:
            return self.analysis.config.get("params", {}).get("factors", list(DEFAULT_FACTORS))
        return list(DEFAULT_FACTORS)

    def _frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.result.get("cells", []))

    # --- actions -----------------------------------------------------------------------
    def launch(self, _event=None) -> None:
        try:
            factors = [float(x) for x in self.factors.value.replace(";", ",").split(",") if x.strip()]
        except ValueError:
            factors = []
        if not factors:
            layout.say(self.status, "Multipliers: give one or more numbers separated by commas, "
                                    "e.g. 0, 0.5, 1, 2.", "danger")
            return
        params = {"factors": factors, "samples": self.samples.value or None}
        run = self.jobs.get_run(self.run.id)
        if run.state is not RunState.SUCCEEDED:  # still training: its latest checkpoint (the sweep pins it)
            params["weights"] = "last"
        try:
            self.analysis = self.jobs.submit_analysis(self.run.id, ANALYSIS, params)
        except InvalidRequest as exc:
            layout.say(self.status, f"Not launched: {field_message(exc)}", "danger")
            return
        except JobsError as exc:
            layout.say(self.status, f"Not launched: {exc}", "danger")
            return
        layout.say(self.status, f"Queued coupling sweep {self.analysis.id}; cells appear as they finish.")
        self.cell_raster = None
        self._load()

    async def show_cell(self, x=None, y=None) -> None:
        """A tapped cell: its rates and accuracy, then its raster (simulated now)."""
        if x is None or y is None:
            return
        cell = next((c for c in self.result.get("cells", [])
                     if plots.factor_label(c["ei_factor"]) == str(x)
                     and plots.factor_label(c["ie_factor"]) == str(y)), None)
        if cell is None:
            return
        self.cell_info.object = (
            f"<p>W_ei × <b>{cell['ei_factor']:g}</b>, W_ie × <b>{cell['ie_factor']:g}</b>: "
            f"total {cell['rate_total_hz']:.2f} Hz (E {cell['rate_e_hz']:.2f} | I {cell['rate_i_hz']:.2f}), "
            f"accuracy {cell['test_acc']:.1f} % — simulating test image 0…</p>"
            f'<p><a href="/whatif?run={self.run.id}&ei={cell["ei_factor"]:g}&ie={cell["ie_factor"]:g}">What-if at this cell →</a></p>')
        try:
            self.cell_raster = await asyncio.to_thread(self.jobs.spike_raster, self.run.id, 0,
                                                       cell["ei_factor"], cell["ie_factor"])
        except JobsError as exc:
            layout.say(self.status, f"No raster: {exc}", "warning")
            return
        self.cell_info.object = self.cell_info.object.replace("simulating test image 0…", "raster of test image 0:")

    # --- figures -----------------------------------------------------------------------
    @param.depends("result", "metric")
    def heatmap(self):
        return plots.coupling_heatmap(self.result.get("cells", []), self._factors(), self.metric)

    @param.depends("result")
    def diagonal_rates(self):
        return plots.coupling_diagonal_rates(self.result.get("cells", []), self._factors())

    @param.depends("result")
    def diagonal_accuracy(self):
        return plots.coupling_diagonal_accuracy(self.result.get("cells", []), self._factors())

    @param.depends("cell_raster")
    def raster(self):
        return plots.raster(self.cell_raster)

    @param.depends("cell_raster")
    def population_rate(self):
        return plots.population_rate(self.cell_raster)

    # --- view --------------------------------------------------------------------------
    def view(self) -> pn.Column:
        # The Tap stream must be one of the DynamicMap's own streams: attached to a
        # DynamicMap of a param method through `source=` it never fires.
        tap = hv.streams.Tap(x=None, y=None)
        heatmap = hv.DynamicMap(lambda result, metric, x, y: self.heatmap(),
                                streams=[hv.streams.Params(self, ["result", "metric"]), tap])
        tap.add_subscriber(lambda x, y: pn.state.execute(partial(self.show_cell, x, y)))
        metric = pn.widgets.RadioButtonGroup.from_param(
            self.param.metric, options={label: key for key, label in plots.COUPLING_METRICS.items()},
            button_type="default")
        source = (f'<p>Trained run <a href="/run?id={self.run.id}">{self.run.id}</a> '
                  f'({html.escape(str(self.run.config.get("arch", "")).upper())}, seed {self.run.config.get("seed")}).'
                  " The star marks the trained coupling (1, 1); hover a cell for all its numbers.</p>")
        return layout.page(
            "Coupling sweep", "/coupling",
            layout.section("Sweep", pn.pane.HTML(source),
                           pn.Row(self.factors, self.samples, self.launch_button), self.progress),
            layout.section("W_ei × W_ie", pn.Row(pn.pane.HTML("<b>colour:</b>", align="center"), metric),
                           plots.figure_panel(heatmap, self.heatmap, self._frame, f"{self.run.id}-coupling")),
            pn.Row(layout.section("Diagonal",
                                  plots.figure_panel(hv.DynamicMap(self.diagonal_rates), self.diagonal_rates,
                                                     self._diagonal_frame, f"{self.run.id}-diagonal-rates"),
                                  plots.figure_panel(hv.DynamicMap(self.diagonal_accuracy), self.diagonal_accuracy,
                                                     self._diagonal_frame, f"{self.run.id}-diagonal-accuracy")),
                   layout.section("Selected cell", self.cell_info,
                                  plots.figure_panel(hv.DynamicMap(self.raster), self.raster,
                                                     lambda: plots.raster_frame(self.cell_raster),
                                                     f"{self.run.id}-cell-raster"),
                                  plots.figure_panel(hv.DynamicMap(self.population_rate), self.population_rate,
                                                     self._rate_frame, f"{self.run.id}-cell-rate")),
                   sizing_mode="stretch_width"),
            status=self.status)

    def _diagonal_frame(self) -> pd.DataFrame:
        frame = self._frame()
        return frame[frame["ei_factor"] == frame["ie_factor"]] if not frame.empty else frame

    def _rate_frame(self) -> pd.DataFrame:
        r = self.cell_raster or {"rate_time_ms": [], "population_rate_hz": []}
        return pd.DataFrame({"time_ms": r["rate_time_ms"], "rate_hz": r["population_rate_hz"]})


def unstable_note(result: dict) -> str:
    """A warning when forward Euler left its stable range in some cells (engine.stability):
    their rates are the integrator's runaway, not the network's, and must not be read."""
    unstable = unstable_cells(result.get("cells", []))
    if not unstable:
        return ""
    worst = max(c["euler_step_max"] for c in unstable)
    samples = result.get("euler_check", {}).get("samples", "the first")
    return (f'<p class="warning-note"><b>Forward Euler is unstable in {len(unstable)} of '
            f'{len(result["cells"])} cells</b> (crossed): dt·g/C reached {worst:.1f} there (stable below '
            f'{UNSTABLE_STEP_FACTOR:g}, on {samples} test images), so their rates come from the integrator, '
            "not from the network. Integrated with the exponential Euler (config integrator "
            "\"exponential_euler\", the seed recipe's), a network is stable at any coupling.</p>")


def field_message(exc: InvalidRequest) -> str:
    """'params.factors: must be ...', not 'params.factors factors must be ...' when the
    message already starts with the field's name."""
    leaf = exc.field.rsplit(".", 1)[-1]
    message = exc.message.removeprefix(leaf).lstrip(" :") if exc.message.startswith(leaf + " ") else exc.message
    return f"{exc.field}: {message}"


def _latest_sweep(services: Services, run_id: str) -> Run | None:
    analyses, _ = services.jobs.list_runs(kind=RunKind.ANALYSIS, limit=1000)
    sweeps = [a for a in analyses if a.source_run_id == run_id and a.config.get("name") == ANALYSIS]
    return sweeps[0] if sweeps else None  # newest first


def _picker(services: Services, asked: str | None = None) -> pn.Column:
    """Which run to sweep; an id that is neither a training run nor one's coupling sweep is
    named (the page showed the list as if none had been given)."""
    unknown = (f"<p>No training run or coupling sweep <code>{html.escape(asked)}</code>.</p>" if asked else "")
    return layout.page("Coupling sweep", "/coupling",
                       layout.section("Which run?", pn.pane.HTML(unknown + picker_html(services))))


def picker_html(services: Services) -> str:
    """The runs a sweep can take: finished ones, then those still training with an epoch done
    (their sweep takes the latest checkpoint; a 100-epoch study's runs train for days), each
    with its recipe (a study holds PING seed 42 in both)."""
    finished, _ = services.jobs.list_runs(kind=RunKind.TRAIN, state=RunState.SUCCEEDED, limit=200)
    running, _ = services.jobs.list_runs(kind=RunKind.TRAIN, state=RunState.RUNNING, limit=200)

    def item(r: Run, when: str) -> str:
        c = r.config
        return (f'<li><a href="/coupling?run={r.id}">{r.id}</a> · {html.escape(str(c.get("arch")))} seed '
                f'{c.get("seed")} · {html.escape(str(c.get("recipe", "canonical")))} recipe · {when}</li>')

    parts = []
    if finished:
        parts.append("<p>Pick a finished training run:</p><ul>"
                     + "".join(item(r, f"{r.n_epochs} epochs") for r in finished) + "</ul>")
    training = [r for r in running if r.n_epochs]
    if training:
        parts.append("<p>Or one still training (its sweep takes the latest checkpoint):</p><ul>"
                     + "".join(item(r, f"epoch {r.n_epochs} of {r.config.get('epochs')}") for r in training)
                     + "</ul>")
    return "".join(parts) or '<p>No finished training run yet: launch one on the <a href="/">Runs</a> page.</p>'


def create(services: Services, feed: LiveFeed) -> pn.Column:
    run_id, analysis_id = layout.query_param("run"), layout.query_param("analysis")
    analysis = _get(services, analysis_id, RunKind.ANALYSIS)
    if analysis is not None and analysis.config.get("name") != ANALYSIS:
        analysis = None
    # a sweep's id alone (/coupling?analysis=ID) finds the run it swept
    run = _get(services, run_id or (analysis.source_run_id if analysis else None), RunKind.TRAIN)
    if run is None:
        return _picker(services, asked=run_id or analysis_id)
    if analysis is None or analysis.source_run_id != run.id:  # another run's sweep is not this run's
        analysis = _latest_sweep(services, run.id)
    return CouplingPage(services, feed, run, analysis).view()


def _get(services: Services, run_id: str | None, kind: RunKind) -> Run | None:
    try:
        run = services.jobs.get_run(run_id) if run_id else None
    except JobsError:
        return None
    return run if run is not None and run.kind is kind else None
