"""Run: one run's trajectories (live while it trains), its cells and weights,
and a spike raster with the population rate and its spectrum."""

from __future__ import annotations

import asyncio
import html
import json

import holoviews as hv
import numpy as np
import panel as pn
import param

from app.api.deps import Services
from app.dashboard import force_page, layout, plots, time_left
from app.dashboard.live import LiveFeed, News
from app.dashboard.run_files import RunFiles
from app.dashboard.runs_page import STARTING_NOTE, starting
from engine.convergence import summarise
from jobs.models import JobsError, Run, RunKind, RunState

WEIGHT_HISTOGRAMS = ("W_in", "W_out")


class RunPage(param.Parameterized):
    records = param.List(default=[], doc="epoch records, in order")
    artifacts_version = param.Integer(default=0, doc="bumped when the run's final files appear")
    raster = param.Dict(default=None, allow_None=True)
    sample = param.Integer(default=0, bounds=(0, None), doc="test image for the raster")

    def __init__(self, services: Services, feed: LiveFeed, run: Run, **params):
        super().__init__(**params)
        self.jobs, self.feed, self.run = services.jobs, feed, run
        self._frame_cache: tuple = (None, None)
        self.files = RunFiles(self.jobs)  # W_in and W_out read a checkpoint once per epoch
        self.status = layout.status_line()
        self.header = pn.pane.HTML(sizing_mode="stretch_width", margin=(0, 20))
        self.summary = pn.pane.HTML(sizing_mode="stretch_width")
        self.simulate_button = pn.widgets.Button(label="Simulate test image", button_type="primary",
                                                 align="end")
        self.simulate_button.on_click(self.simulate)
        self.records = self.jobs.metrics(run.id)
        self._render_header()
        if pn.state.curdoc:
            key = feed.subscribe(pn.state.curdoc, self._on_news)
            pn.state.on_session_destroyed(lambda _ctx: feed.unsubscribe(key))
            if self._has_weights():
                pn.state.onload(self.simulate)

    # --- data --------------------------------------------------------------------------
    def _frame(self):
        # six figures redraw from the same records on each epoch: build their frame once
        if self._frame_cache[0] is not self.records:
            self._frame_cache = (self.records, plots.metrics_frame(self.records))
        return self._frame_cache[1]

    def _npz(self, name: str) -> dict[str, np.ndarray] | None:
        return self.files.npz(self.run.id, name)

    def _has_weights(self) -> bool:
        names = {a["name"] for a in self.jobs.list_artifacts(self.run.id)}
        return "artifacts/weights_final.npz" in names or "checkpoints/last.pt" in names

    def _on_news(self, news: News) -> None:
        fresh = [r for r in news.epochs.get(self.run.id, []) if r["epoch"] > len(self.records)]
        if fresh:
            self.records = self.records + fresh
        if self.run.id in news.runs or (news.queue_changed and self.run.state is RunState.QUEUED):
            was = self.run.state
            self.run = news.runs.get(self.run.id, self.run)
            self._render_header()
            if self.run.state is RunState.SUCCEEDED and was is not RunState.SUCCEEDED:
                self.artifacts_version += 1
                pn.state.execute(self.simulate)

    # --- header --------------------------------------------------------------------------
    def _render_header(self) -> None:
        run, config = self.run, self.run.config
        state = run.state.value
        if run.state is RunState.QUEUED and self.jobs.queue_paused_at() is not None:
            state += " · the queue is paused: it starts once the queue is resumed (Runs page)"
        facts = [("state", state), ("epochs", f"{run.n_epochs} / {config.get('epochs')}"),
                 ("progress", f"{100 * (1.0 if run.state is RunState.SUCCEEDED else run.progress):.0f} %"
                              + (f" · {STARTING_NOTE}" if starting(run) else "")
                              + (f" · {left}" if (left := time_left.describe(time_left.seconds_left(run, self.records)))
                                 else "")),
                 ("recipe", config.get("recipe", "canonical")),  # runs stored before recipes: canonical
                 ("arch", config.get("arch")), ("seed", config.get("seed")), ("tier", config.get("tier")),
                 ("E / I cells", f"{config.get('n_e')} / {config.get('n_i')}"),
                 ("trial", f"{config.get('t_ms')} ms at dt {config.get('dt_ms')} ms"),
                 ("trainable", ", ".join(config.get("trainable", []))), ("backend", config.get("backend")),
                 ("sweep", run.sweep_id or "—")]
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
        error = f'<pre class="field-error">{html.escape(run.error)}</pre>' if run.error else ""
        self.header.object = f'<table class="kv">{cells}</table>{error}'
        self.summary.object = self._summary_html()

    def _summary_html(self) -> str:
        if not self.records:
            return '<p class="muted">Convergence appears after the first epoch.</p>'
        s = summarise(self.records)
        def flag(ok: bool | None) -> str:
            if ok is None:  # fewer epochs than the slope window: no verdict
                return f'<span class="muted">{html.escape(s["convergence"])}</span>'
            return '<span class="ok">converged</span>' if ok else '<span class="no">still moving</span>'

        which = "final" if self.run.state is RunState.SUCCEEDED else f"epoch {s['epochs']}"  # still training
        rows = [(f"{which} test accuracy", f"{s['final']['test_acc']:.2f} %"),
                (f"{which} E | I rate", f"{s['final']['rate_e_hz']:.2f} | {s['final']['rate_i_hz']:.2f} Hz"),
                (f"accuracy slope (last {s['slopes']['window']} epochs)",
                 f"{s['slopes']['test_acc_pp_per_epoch']:+.3f} pp/epoch {flag(s['converged']['test_acc'])}"),
                (f"E-rate slope (last {s['slopes']['window']} epochs)",
                 f"{s['slopes']['rate_e_hz_per_epoch']:+.3f} Hz/epoch {flag(s['converged']['rate_e'])}")]
        table = '<table class="kv">' + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows) + "</table>"
        return divergence_html(self.records) + table

    # --- figures -------------------------------------------------------------------------
    @param.depends("records")
    def accuracy(self):
        return plots.trajectories(self._frame(), {"test_acc": "test", "train_acc": "train"},
                                  title="Accuracy", ylabel="accuracy (%)", colors=(plots.ACC_COLOR, "#a0aec0"))

    @param.depends("records")
    def loss(self):
        return plots.trajectories(self._frame(), {"test_loss": "test", "train_loss": "train"},
                                  title="Loss", ylabel="cross-entropy")

    @param.depends("records")
    def rates(self):
        return plots.trajectories(self._frame(), {"rate_e_hz": "E", "rate_i_hz": "I"}, title="Firing rates",
                                  ylabel="rate (Hz)", colors=(plots.E_COLOR, plots.I_COLOR))

    @param.depends("records")
    def accuracy_vs_rate(self):
        return plots.accuracy_vs_rate(self._frame())

    @param.depends("records")
    def weight_norms(self):
        names = self.run.config.get("trainable", [])
        return plots.trajectories(self._frame(), {f"w_norm.{n}": n for n in names}, title="||W||_F",
                                  ylabel="Frobenius norm")

    @param.depends("records")
    def grad_ratios(self):
        names = self.run.config.get("trainable", [])
        return plots.trajectories(self._frame(), {f"grad_ratio.{n}": n for n in names}, title="||grad|| / ||W||",
                                  ylabel="ratio", logy=True)

    def _cell_rates(self, population: str) -> dict[str, np.ndarray]:
        rates = self._npz("rates")
        return {population: rates[f"rate_{population.lower()}_hz"]} if rates else {}

    def _missing(self) -> str:
        """Why a per-cell or weight figure is (partly) empty: these files are written after
        every epoch, the final ones when the run finishes."""
        if not self.run.state.finished:
            return "written after its first epoch"
        return f"none: the run {self.run.state.value} before its final evaluation"

    def _cell_rates_figure(self, population: str, color: str):
        """Rewritten after every epoch: a long run's per-cell rates are seen while it trains."""
        rates = self._npz("rates")
        if rates is None:
            when = "test set"  # none yet, or none ever (the run stopped first): the note says which
        elif self.run.state is RunState.SUCCEEDED or "epoch" not in rates:
            when = "test set, final"
        else:
            when = f"test set, epoch {int(rates['epoch'])}"
        samples = {population: rates[f"rate_{population.lower()}_hz"]} if rates else {}  # the one read above
        return plots.histograms(samples, [population], xlabel="rate (Hz)", colors=(color,),
                                title=f"Per-cell {population} rates ({when})", missing=self._missing())

    @param.depends("records", "artifacts_version")
    def cell_rates_e(self):
        return self._cell_rates_figure("E", plots.E_COLOR)

    @param.depends("records", "artifacts_version")
    def cell_rates_i(self):
        return self._cell_rates_figure("I", plots.I_COLOR)

    def _end_weights(self) -> tuple[str, dict[str, np.ndarray] | None]:
        """The "end" series' label and weights: the final ones or, while the run trains, its
        latest checkpoint's (a 100-epoch run's histograms stood empty for days)."""
        final = self._npz("weights_final")
        if final is not None:  # else its latest checkpoint's: queued after a restart, cancelled, failed
            return "end", final
        latest = self.files.latest_weights(self.run.id)
        return ("end", None) if latest is None else (f"epoch {latest[1]}", latest[0])

    def _weights(self, name: str) -> tuple[dict[str, np.ndarray], str]:
        # the layers keep their labels ("init", "end"): a live plot whose layer labels change
        # between updates drew nothing; the title says which epoch "end" is
        end_label, end = self._end_weights()
        return plots.weight_series(name, self._npz("weights_init"), end), end_label

    def _weight_histogram(self, name: str):
        series, end_label = self._weights(name)
        labels = plots.WEIGHT_LABELS if name == "W_in" else plots.WEIGHT_LABELS[:2]
        return plots.histograms(series, labels, title=f"{name} values, init vs {end_label}",
                                xlabel="weight", bins=40, logy=True, colors=plots.WEIGHT_COLORS,
                                missing=self._missing())

    @param.depends("records", "artifacts_version")
    def w_in_values(self):
        return self._weight_histogram("W_in")

    @param.depends("records", "artifacts_version")
    def w_out_values(self):
        return self._weight_histogram("W_out")

    @param.depends("raster")
    def raster_plot(self):
        return plots.raster(self.raster)

    @param.depends("raster")
    def population_rate(self):
        return plots.population_rate(self.raster)

    @param.depends("raster")
    def spectrum(self):
        return plots.spectrum(self.raster)

    async def simulate(self, _event=None) -> None:
        self.simulate_button.loading = True
        try:
            self.raster = await asyncio.to_thread(self.jobs.spike_raster, self.run.id, self.sample)
            self.status.visible = False
        except JobsError as exc:
            layout.say(self.status, f"No raster: {exc}", "warning")
        finally:
            self.simulate_button.loading = False

    # --- view ----------------------------------------------------------------------------
    def _figure(self, method, name: str, frame) -> pn.Column:
        return plots.figure_panel(hv.DynamicMap(method), method, frame, name)

    def view(self) -> pn.Column:
        f, rid = self._figure, self.run.id
        histogram_csv = lambda samples: (lambda: plots.histogram_frame(samples()))  # noqa: E731
        sample = pn.widgets.IntInput.from_param(self.param.sample, label="test image #", width=120)
        actions = pn.Row(
            pn.pane.HTML(f'<a href="/coupling?run={rid}">Coupling sweep →</a>&nbsp;&nbsp;'
                         f'<a href="/whatif?run={rid}">What-if →</a>&nbsp;&nbsp;'
                         f'<a href="/compare?runs={rid}">Compare →</a>&nbsp;&nbsp;'
                         f'<a href="/api/runs/{rid}/metrics?format=csv">metrics.csv</a>'),
            sizing_mode="stretch_width")
        grid = lambda *items: pn.GridBox(*items, ncols=2, sizing_mode="stretch_width")  # noqa: E731
        return layout.page(
            f"Run {rid}", "", pn.Row(layout.section("Run", self.header, actions, width=460, sizing_mode=None),
                                     layout.section("Convergence", self.summary), sizing_mode="stretch_width"),
            layout.section("Learning", grid(
                f(self.accuracy, f"{rid}-accuracy", self._frame),
                f(self.loss, f"{rid}-loss", self._frame),
                f(self.rates, f"{rid}-rates", self._frame),
                f(self.accuracy_vs_rate, f"{rid}-accuracy-vs-rate", self._frame),
                f(self.weight_norms, f"{rid}-weight-norms", self._frame),
                f(self.grad_ratios, f"{rid}-grad-ratios", self._frame))),
            layout.section("Cells and weights", grid(
                f(self.cell_rates_e, f"{rid}-cell-rates-e", histogram_csv(lambda: self._cell_rates("E"))),
                f(self.cell_rates_i, f"{rid}-cell-rates-i", histogram_csv(lambda: self._cell_rates("I"))),
                f(self.w_in_values, f"{rid}-w-in", histogram_csv(lambda: self._weights("W_in")[0])),
                f(self.w_out_values, f"{rid}-w-out", histogram_csv(lambda: self._weights("W_out")[0])))),
            layout.section("Spikes", pn.Row(sample, self.simulate_button),
                           f(self.raster_plot, f"{rid}-raster", lambda: plots.raster_frame(self.raster)),
                           grid(f(self.population_rate, f"{rid}-population-rate",
                                  lambda: _rate_frame(self.raster)),
                                f(self.spectrum, f"{rid}-spectrum", lambda: plots.spectrum_frame(self.raster)))),
            status=self.status)


def divergence_html(records: list[dict]) -> str:
    """The flag training sets on an epoch that looks diverged (engine.divergence), above the slopes."""
    reasons = records[-1].get("divergence") if records else None
    if not reasons:
        return ""
    return (f'<p class="field-error diverged"><b>Diverged</b> (epoch {records[-1]["epoch"]}): '
            f'{html.escape(reasons)}. Lower lr or w_in_scale and run again.</p>')


def _rate_frame(raster: dict | None):
    import pandas as pd

    if not raster:
        return pd.DataFrame({"time_ms": [], "rate_hz": []})
    return pd.DataFrame({"time_ms": raster["rate_time_ms"], "rate_hz": raster["population_rate_hz"]})


def analysis_view(services: Services, run: Run) -> pn.Column:
    """An analysis run: its parameters and result (the coupling sweep has its own page)."""
    link = (f'<p><a href="/coupling?run={run.source_run_id}&analysis={run.id}">Open the heatmap →</a></p>'
            if run.config.get("name") == "coupling_sweep" else "")
    try:
        result = json.loads(services.jobs.artifact_path(run.id, "result.json").read_text())
    except JobsError:
        result = {"result": "not written yet"}
    return layout.page(
        f"Analysis {run.id}: {run.config.get('name')}", "",
        layout.section("Analysis", pn.pane.HTML(
            f'<p>State <b>{run.state.value}</b> · source run <a href="/run?id={run.source_run_id}">'
            f'{run.source_run_id}</a></p>{link}'),
            pn.pane.JSON(result, depth=2, sizing_mode="stretch_width")))


def create(services: Services, feed: LiveFeed) -> pn.Column:
    run_id = layout.query_param("id")
    try:
        run = services.jobs.get_run(run_id or "")
    except JobsError:
        pick = 'Pick one on the <a href="/">Runs</a> page (click its id).'
        if not run_id:  # /run as typed or bookmarked: nothing went wrong, no run was named
            return layout.page("Run", "", layout.section("Which run?", pn.pane.HTML(f"<p>{pick}</p>")))
        return layout.page("Run not found", "", layout.section(
            "Nothing here", pn.pane.HTML(f"<p>There is no run <code>{html.escape(run_id)}</code>. {pick}</p>")))
    if run.kind is RunKind.FORCE:
        return force_page.create(services, feed)  # the same ?id= names the run there
    if run.kind is not RunKind.TRAIN:
        return analysis_view(services, run)
    return RunPage(services, feed, run).view()
