"""FORCE: launch an experiment (engine.force) as a run, pick one of the FORCE
runs, and see its result: traces filling in while a network learns, the Q x G
heatmaps of both twins with a clicked point, decoders, size sweep and PCA.

Results are the run's own files (docs/force.md), re-read whenever the live
feed says the run's progress or state changed.
"""

from __future__ import annotations

import datetime as dt
import html
import json
import typing
from functools import partial
from typing import Any

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from app.api.deps import Services
from app.dashboard import force_plots as fp
from app.dashboard import layout, plots, time_left
from app.dashboard.estimate import ForceCalibration
from app.dashboard.live import LiveFeed, News
from engine.force.config import BACKENDS, DTYPES, ENCODERS, TASKS, ForceConfig
from jobs.models import InvalidRequest, JobsError, Run, RunKind, RunState
from jobs.service import force_work, list_force_experiments, validate_force

CHOICES: dict[str, tuple[str, ...]] = {"task": TASKS, "encoder": ENCODERS, "dtype": tuple(DTYPES), "backend": BACKENDS}
# Config fields shown first; the others sit in the "All config fields" card.
ESSENTIAL = ("task", "n", "q", "g", "alpha", "warmup_s", "learn_s", "test_s", "seed", "device")
HINTS = typing.get_type_hints(ForceConfig)
MAX_RUNS = 500
RUN_COLUMNS = ["id", "experiment", "state", "progress", "summary", "created", "detail"]


# --- the launch form ----------------------------------------------------------------------
def _widget(name: str, default: Any, hint: Any = None) -> pn.widgets.Widget:
    """A widget following the default's type; lists and objects are edited as JSON."""
    if name in CHOICES:
        return pn.widgets.Select(name=name, options=list(CHOICES[name]), value=default)
    if isinstance(default, bool):
        return pn.widgets.Checkbox(name=name, value=default)
    if isinstance(default, int) or hint is int:
        return pn.widgets.IntInput(name=name, value=default)
    if isinstance(default, float) or hint in (float, float | None):
        return pn.widgets.FloatInput(name=name, value=default, format="0[.]0[0000000]",
                                     placeholder="from task" if default is None else "")
    if isinstance(default, (list, dict)):
        return pn.widgets.TextInput(name=name, value=json.dumps(default))
    return pn.widgets.TextInput(name=name, value=str(default))


class ForceForm:
    """Generated fields for one experiment: its own parameters, then its config."""

    def __init__(self, experiment: dict) -> None:
        self.experiment = experiment
        defaults = experiment["defaults"]
        self.params = {k: _widget(k, v) for k, v in defaults.items() if k != "config"}
        self.config = {k: _widget(k, v, HINTS.get(k)) for k, v in defaults["config"].items()}
        self.errors = {key: pn.pane.HTML("", css_classes=["field-error"], visible=False, margin=(0, 10))
                       for key in [*self.params, *(f"config.{k}" for k in self.config)]}
        for widget in [*self.params.values(), *self.config.values()]:
            widget.sizing_mode = "stretch_width"
        self._advanced = pn.Card(title="All config fields", collapsed=True, sizing_mode="stretch_width")
        self._advanced.param.watch(self._fill_advanced, "collapsed")

    def watch(self, callback) -> None:
        """Call `callback(event)` whenever a field's value changes."""
        for widget in [*self.params.values(), *self.config.values()]:
            widget.param.watch(callback, "value")

    def _field(self, key: str) -> pn.Column:
        widget = self.config[key[7:]] if key.startswith("config.") else self.params[key]
        return pn.Column(widget, self.errors[key], margin=0, sizing_mode="stretch_width")

    def _fill_advanced(self, event) -> None:
        # built on first expand: ~25 more widgets would slow every first paint
        if not event.new and not self._advanced.objects:
            rest = [f"config.{k}" for k in self.config if k not in ESSENTIAL]
            self._advanced.append(pn.GridBox(*map(self._field, rest), ncols=2, sizing_mode="stretch_width"))

    def panel(self) -> pn.Column:
        grid = lambda keys: pn.GridBox(*map(self._field, keys), ncols=2, sizing_mode="stretch_width")  # noqa: E731
        return pn.Column(
            pn.pane.HTML(f'<p class="muted">{html.escape(self.experiment["description"])}</p>', margin=(0, 10)),
            grid(list(self.params)), grid([f"config.{k}" for k in ESSENTIAL if k in self.config]),
            self._advanced, sizing_mode="stretch_width")

    def values(self) -> dict[str, Any]:
        """The parameters that differ from the experiment's defaults (so fields that
        resolve from others, e.g. tau_d_ms from task, still do); ValueError(key,
        message) for a field that is not JSON."""
        defaults = self.experiment["defaults"]
        chosen: dict[str, Any] = {}
        for key, widget in self.params.items():
            value = self._value(key, widget)
            if value != defaults[key]:
                chosen[key] = value
        config = {k: w.value for k, w in self.config.items() if w.value != defaults["config"][k]}
        if config:
            chosen["config"] = config
        return chosen

    @staticmethod
    def _value(key: str, widget: pn.widgets.Widget) -> Any:
        if not isinstance(widget, pn.widgets.TextInput):
            return widget.value
        try:
            return json.loads(widget.value)
        except json.JSONDecodeError as exc:
            raise ValueError(key, f"not JSON: {exc.msg} (column {exc.colno})") from None

    def show_error(self, field: str, message: str) -> bool:
        """Mark the field an error names (params.config.n, params.q_values);
        False when no field matches (the caller says it elsewhere)."""
        key = field.removeprefix("params.")
        if key not in self.errors:
            return False
        if key.startswith("config.") and key[7:] not in ESSENTIAL:
            self._advanced.collapsed = False  # show the field the error is about
        self.errors[key].object, self.errors[key].visible = f"⚠ {html.escape(message)}", True
        widget = self.config[key[7:]] if key.startswith("config.") else self.params[key]
        widget.css_classes = ["invalid"]
        return True

    def clear_errors(self) -> None:
        for pane in self.errors.values():
            pane.object, pane.visible = "", False
        for widget in [*self.params.values(), *self.config.values()]:
            widget.css_classes = []


# --- the runs list ------------------------------------------------------------------------
def _summary(run: Run) -> str:
    params = run.config.get("params", {})
    c = params.get("config", {})
    parts = [f"{c.get('task')}", f"N {c.get('n')}"]
    if "q_values" in params:
        parts.append(f"{len(params['q_values'])} Q × {len(params['g_values'])} G")
    elif "n_values" in params:
        parts[1] = "N " + ", ".join(map(str, params["n_values"]))
    else:
        parts.append(f"Q {c.get('q')} G {c.get('g')}")
    parts.append(f"{c.get('warmup_s')}+{c.get('learn_s')}+{c.get('test_s')} s")
    return " · ".join(parts)


def run_row(run: Run) -> dict:
    error = (run.error or "").strip().splitlines()
    # a grid at N 2000 runs for hours: its row says how long it has left (from its own pace)
    detail = error[-1][:100] if error else time_left.describe(time_left.seconds_left(run, []))
    return {"id": run.id, "experiment": run.config.get("experiment", ""), "state": run.state.value,
            "progress": round(100 * (1.0 if run.state is RunState.SUCCEEDED else run.progress or 0.0)),
            "summary": _summary(run),
            "created": dt.datetime.fromtimestamp(run.created_at).strftime("%Y-%m-%d %H:%M:%S"),
            "detail": detail}


# --- the page -----------------------------------------------------------------------------
class ForcePage(param.Parameterized):
    experiment = param.Selector(default="train", objects=["train"])
    result = param.Dict(default={}, doc="the selected run's result.json")
    arrays = param.Dict(default={}, doc="the selected run's .npz files, by name")
    selected = param.Tuple(default=None, allow_None=True, length=2, doc="(q, g) of the clicked grid point")
    alpha_index = param.Integer(default=0, doc="alpha row whose decoders the alpha experiment shows")

    def __init__(self, services: Services, feed: LiveFeed, run: Run | None, **params):
        super().__init__(**params)
        self.jobs, self.run = services.jobs, run
        self.experiments = {e["name"]: e for e in list_force_experiments()}
        self.param.experiment.objects = list(self.experiments)
        self.status = layout.status_line()
        self.form_holder = pn.Column(sizing_mode="stretch_width")
        self.estimate = pn.pane.HTML("", css_classes=["muted"], margin=(0, 10), sizing_mode="stretch_width")
        self.calibration = ForceCalibration.from_runs(self.jobs.finished_force_work())
        self.form = self._build_form()
        self.param.watch(lambda _e: self._build_form(), "experiment")
        self.table = pn.widgets.Tabulator(
            self._runs_frame(), show_index=False, disabled=True, sizing_mode="stretch_width",
            layout="fit_data_stretch", pagination="local", page_size=8,
            sorters=[{"field": "created", "dir": "desc"}],
            formatters={"progress": {"type": "progress", "legend": True, "color": "#2b6cb0"},
                        "id": {"type": "link", "urlPrefix": "/force?id=", "target": "_self"}},
            configuration={"placeholder": "No FORCE runs yet: launch one with the form on the left."})
        self.header = pn.pane.HTML(sizing_mode="stretch_width")
        self.point_info = pn.pane.HTML('<p class="muted">Click a cell of either heatmap.</p>',
                                       sizing_mode="stretch_width")
        if run is not None:
            self._load()
        if pn.state.curdoc:
            key = feed.subscribe(pn.state.curdoc, self._on_news)
            pn.state.on_session_destroyed(lambda _ctx: feed.unsubscribe(key))

    # --- form and launch -----------------------------------------------------------------
    def _build_form(self) -> ForceForm:
        self.form = ForceForm(self.experiments[self.experiment])
        self.form_holder.objects = [self.form.panel()]
        self.form.watch(lambda _event: self._show_estimate())
        self._show_estimate()
        return self.form

    def _show_estimate(self) -> None:
        """How long the form's experiment would take here; nothing while a field is invalid
        (Launch marks it)."""
        try:
            params = validate_force(self.experiment, self.form.values())
        except (ValueError, InvalidRequest):
            self.estimate.object = ""
            return
        note = self.calibration.describe(self.experiment, params, force_work(self.experiment, params))
        self.estimate.object = f"<p>{html.escape(note)}</p>"

    def launch(self, _event=None) -> None:
        self.form.clear_errors()
        try:
            params = self.form.values()
        except ValueError as exc:
            key, message = exc.args
            self.form.show_error(key, message)
            layout.say(self.status, "Not launched: a field needs attention (marked below).", "danger")
            return
        try:
            run = self.jobs.submit_force(self.experiment, params)
        except InvalidRequest as exc:
            shown = self.form.show_error(exc.field, exc.message)
            layout.say(self.status, "Not launched: a field needs attention (marked below)." if shown
                       else f"Not launched: {html.escape(exc.field)} {html.escape(exc.message)}", "danger")
            return
        except JobsError as exc:
            layout.say(self.status, f"Not launched: {html.escape(str(exc))}", "danger")
            return
        layout.say(self.status, f'Queued {html.escape(self.experiment)} run <a href="/force?id={run.id}">{run.id}</a>.')
        self.table.value = self._runs_frame()

    # --- data ----------------------------------------------------------------------------
    def _runs_frame(self) -> pd.DataFrame:
        runs, _ = self.jobs.list_runs(kind=RunKind.FORCE, limit=MAX_RUNS)
        return pd.DataFrame([run_row(r) for r in runs], columns=RUN_COLUMNS)

    def _read_npz(self, name: str) -> dict[str, np.ndarray] | None:
        try:
            with np.load(self.jobs.artifact_path(self.run.id, name)) as data:
                return {k: data[k] for k in data.files}
        except (JobsError, OSError, ValueError):  # not written yet
            return None

    def _load(self) -> None:
        """Re-read the run's result file and its arrays."""
        try:
            result = json.loads(self.jobs.artifact_path(self.run.id, "result.json").read_text())
        except (JobsError, json.JSONDecodeError):
            result = {}  # queued: written when the experiment starts
        names = [a["name"] for a in self.jobs.list_artifacts(self.run.id) if a["name"].endswith(".npz")]
        self.arrays = {name: arrays for name in names if (arrays := self._read_npz(name)) is not None}
        self.result = result
        self._render_header()

    def _on_news(self, news: News) -> None:
        if any(r.kind is RunKind.FORCE for r in news.runs.values()):
            self.table.value = self._runs_frame()
        if any(r.kind is RunKind.FORCE and r.state is RunState.SUCCEEDED for r in news.runs.values()):
            self.calibration = ForceCalibration.from_runs(self.jobs.finished_force_work())
            self._show_estimate()
        if self.run is not None and self.run.id in news.runs:
            self.run = news.runs[self.run.id]
            self._load()

    def _params(self) -> dict:
        return self.run.config.get("params", {}) if self.run else {}

    # --- header --------------------------------------------------------------------------
    def _render_header(self) -> None:
        run, params = self.run, self._params()
        c = params.get("config", {})
        done, total = self.result.get("units_done"), self.result.get("units_total")
        facts = [("experiment", run.config.get("experiment")), ("state", run.state.value),
                 ("progress", f"{100 * (1.0 if run.state is RunState.SUCCEEDED else run.progress):.0f} %"
                  + (f" ({done} of {total} units)" if total else "")
                  + (f", {left}" if (left := time_left.describe(time_left.seconds_left(run, []))) else "")),
                 ("task", c.get("task")), ("N", ", ".join(map(str, params.get("n_values", []))) or c.get("n")),
                 ("Q, G", f"{c.get('q')}, {c.get('g')}" if "q_values" not in params else
                  f"{len(params['q_values'])} × {len(params['g_values'])} grid"),
                 ("alpha", ", ".join(f"{a:g}" for a in params.get("alphas", [])) or c.get("alpha")),
                 ("phases (warm-up, learning, test)",
                  f"{c.get('warmup_s')} s, {c.get('learn_s')} s, {c.get('test_s')} s"),
                 ("dt", f"{c.get('dt_ms')} ms"), ("seed", c.get("seed")), ("device", c.get("device"))]
        cells = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in facts)
        error = f'<pre class="field-error">{html.escape(run.error)}</pre>' if run.error else ""
        files = (f'<p><a href="/api/runs/{run.id}/artifacts/result.json" target="_blank">result.json</a> · '
                 f'<a href="/api/runs/{run.id}/artifacts" target="_blank">all files</a></p>')
        self.header.object = f'<table class="kv">{cells}</table>{error}{files}{self._networks_table()}'

    def _networks_table(self) -> str:
        """Test error, RMSE and the rest per network, where the result has them."""
        networks = self.result.get("networks") or {}
        rows = [(n, r) for n, r in networks.items() if isinstance(r, dict) and "test_error" in r]
        if not rows:
            return ""
        keys = [k for k in ("test_error", "rmse", "success", "frequency_hz", "amplitude", "end_rate_hz")
                if k in rows[0][1]]
        head = "".join(f"<th>{k}</th>" for k in keys)
        body = "".join(f"<tr><th>{fp.NETWORK_LABELS.get(n, n)}</th>"
                       + "".join(f"<td>{_fmt_result(r, k)}</td>" for k in keys) + "</tr>" for n, r in rows)
        fit = self.result.get("decoder_fit") or {}
        extra = (f"<p>decoders: r {_fmt(fit.get('r'))}, slope {_fmt(fit.get('slope'))}</p>" if fit else "")
        return f'<table class="kv"><tr><th></th>{head}</tr>{body}</table>{extra}'

    # --- grid selection ------------------------------------------------------------------
    def select(self, x=None, y=None) -> None:
        """A tapped heatmap cell (x: G label, y: Q label)."""
        if x is None or y is None:
            return
        point = next((p for p in self.result.get("points", [])
                      if fp.label(p["g"]) == str(x) and fp.label(p["q"]) == str(y)), None)
        if point is None:
            return
        self.selected = (point["q"], point["g"])

    @param.depends("selected", "result", watch=True)
    def _render_point(self) -> None:
        point = next((p for p in self.result.get("points", []) if self.selected
                      and (p["q"], p["g"]) == tuple(self.selected)), None)
        if point is None:
            return
        rows = "".join(
            f"<tr><th>{fp.NETWORK_LABELS[n]}</th><td>{_fmt_result(r, 'test_error')}</td>"
            f"<td>{_fmt_result(r, 'log10_error')}</td><td>{_fmt_result(r, 'rmse')}</td>"
            f"<td>{_fmt_result(r, 'success')}</td>"
            f"<td>{_fmt(r.get('end_rate_hz'))}</td></tr>"
            for n in fp.NETWORKS if (r := point.get(n)))
        fit = point.get("decoder_fit") or {}
        self.point_info.object = (
            f"<p>Point <b>Q = {point['q']:g}, G = {point['g']:g}</b></p><table class=\"kv\"><tr><th></th>"
            "<th>test error</th><th>log10</th><th>RMSE</th><th>success</th><th>end rate (Hz)</th></tr>"
            f"{rows}</table><p>decoders phi_spike vs phi_rate: r {_fmt(fit.get('r'))}, "
            f"slope {_fmt(fit.get('slope'))}</p>")

    # --- figures -------------------------------------------------------------------------
    def _traces(self, network: str) -> dict | None:
        return self.arrays.get(f"traces_{network}.npz")

    @param.depends("arrays", "result")
    def traces_lif(self):
        return fp.traces(self._traces("lif"), "lif", self.result.get("phases") or self._phases())

    @param.depends("arrays", "result")
    def traces_rate(self):
        return fp.traces(self._traces("rate"), "rate", self.result.get("phases") or self._phases())

    def _phases(self) -> dict:
        return self._params().get("config", {})

    def _decoders(self) -> dict | None:
        if self.run.config.get("experiment") == "alpha":
            return self.arrays.get(f"decoders_alpha{self.alpha_index}.npz")
        return self.arrays.get("decoders.npz")

    @param.depends("arrays", "alpha_index")
    def decoders(self):
        alphas = self._params().get("alphas", [])
        prefix = f"α = {alphas[self.alpha_index]:g}: " if self.run.config.get("experiment") == "alpha" else ""
        return fp.decoder_scatter(self._decoders(), prefix)

    def _heatmap(self, network: str | None, value: str):
        clim = fp.error_range(self.result) if value == "log10_error" else (-1.0, 1.0)
        params = self._params()
        return fp.grid_heatmap(self.result, params["q_values"], params["g_values"], network, value, clim,
                               self.selected)

    def heatmap_lif(self):
        return self._heatmap("lif", "log10_error")

    def heatmap_rate(self):
        return self._heatmap("rate", "log10_error")

    @param.depends("result", "selected")
    def heatmap_decoder_r(self):
        return self._heatmap(None, "decoder_r")

    @param.depends("result")
    def size_errors(self):
        return fp.size_errors(self.result)

    @param.depends("result")
    def size_correlation(self):
        return fp.size_correlation(self.result)

    @param.depends("result")
    def pca_spectrum(self):
        return fp.pca_spectrum(self.result)

    @param.depends("result")
    def pca_gains(self):
        return fp.pca_gains(self.result, self._params().get("alphas", []))

    # --- view ----------------------------------------------------------------------------
    def _figure(self, method, name: str, frame, plot=None) -> pn.Column:
        return plots.figure_panel(plot if plot is not None else hv.DynamicMap(method), method, frame,
                                  f"{self.run.id}-{name}")

    def _tapped_heatmap(self, method) -> hv.DynamicMap:
        # The Tap stream must be one of the DynamicMap's own streams: attached to a
        # DynamicMap of a param method through `source=` it never fires.
        tap = hv.streams.Tap(x=None, y=None)
        tap.add_subscriber(lambda x, y: pn.state.execute(partial(self.select, x, y), schedule=True))
        return hv.DynamicMap(lambda result, selected, x, y: method(),
                             streams=[hv.streams.Params(self, ["result", "selected"]), tap])

    def _results(self) -> list:
        experiment = self.run.config.get("experiment")
        pair = lambda *items: pn.Row(*items, sizing_mode="stretch_width")  # noqa: E731
        result_frame = lambda: fp.grid_frame(self.result, self._params().get("q_values", []),  # noqa: E731
                                             self._params().get("g_values", []))
        decoders = self._figure(self.decoders, "decoders", lambda: fp.decoder_frame(self._decoders()))
        if experiment == "train":
            return [layout.section(
                "Target vs output (live while learning)",
                pair(*(self._figure(getattr(self, f"traces_{n}"), f"traces-{n}",
                                    lambda n=n: fp.traces_frame(self._traces(n)))
                       for n in fp.NETWORKS if n in self._params().get("networks", fp.NETWORKS))),
                decoders if len(self._params().get("networks", [])) == 2 else pn.Spacer(height=0))]
        if experiment == "grid":
            maps = [self._figure(method, f"grid-{n}", result_frame, self._tapped_heatmap(method))
                    for n, method in (("lif", self.heatmap_lif), ("rate", self.heatmap_rate))]
            return [layout.section("Q × G grid: log10 test error (one colour scale for both)", pair(*maps)),
                    pair(layout.section("Selected point", self.point_info, width=520, sizing_mode=None),
                         layout.section("Decoder correlation per point",
                                        self._figure(self.heatmap_decoder_r, "grid-decoder-r", result_frame)))]
        if experiment == "size":
            frame = lambda: fp.size_frame(self.result)  # noqa: E731
            return [layout.section("Network size", pair(self._figure(self.size_errors, "size-errors", frame),
                                                        self._figure(self.size_correlation, "size-r", frame)))]
        if experiment == "pca":
            frame = lambda: fp.pca_frame(self.result)  # noqa: E731
            return [layout.section("PCA of the filtered rates", pair(
                self._figure(self.pca_spectrum, "pca-spectrum", frame),
                self._figure(self.pca_gains, "pca-gains", frame)))]
        if experiment == "alpha":
            alphas = self._params().get("alphas", [])
            choice = pn.widgets.RadioButtonGroup(options={f"α = {a:g}": i for i, a in enumerate(alphas)}, value=0)
            choice.link(self, value="alpha_index")
            return [layout.section("Slow vs fast alpha", pn.pane.HTML(self._alpha_table), choice, decoders)]
        if experiment == "transfer":
            return [layout.section("Decoders of both twins", pn.pane.HTML(self._transfer_table), decoders)]
        return [layout.section("Result", pn.pane.JSON(self.param.result, depth=3, sizing_mode="stretch_width"))]

    @param.depends("result")
    def _alpha_table(self) -> str:
        body = "".join(
            f"<tr><th>{row['alpha']:g}</th>" + "".join(
                f"<td>{_fmt(row[n].get('test_error'))}</td>" for n in fp.NETWORKS)
            + f"<td>{_fmt(row['decoder_fit'].get('r'))}</td><td>{_fmt(row['decoder_fit'].get('slope'))}</td></tr>"
            for row in self.result.get("rows", []))
        return ('<table class="kv"><tr><th>alpha</th><th>LIF test error</th><th>rate test error</th>'
                f"<th>decoder r</th><th>slope</th></tr>{body}</table>")

    @param.depends("result")
    def _transfer_table(self) -> str:
        body = "".join(f"<tr><th>{fp.NETWORK_LABELS[c['network']]}</th><td>{fp.NETWORK_LABELS[c['decoders']]}</td>"
                       f"<td>{_fmt(c.get('test_error'))}</td><td>{_fmt(c.get('rmse'))}</td></tr>"
                       for c in self.result.get("cells", []))
        return ('<table class="kv"><tr><th>network</th><th>decoders of</th><th>test error</th><th>RMSE</th></tr>'
                f"{body}</table>")

    def view(self) -> pn.Column:
        launch = pn.widgets.Button(name="Launch", button_type="primary", width=120)
        launch.on_click(self.launch)
        experiment = pn.widgets.Select.from_param(self.param.experiment, name="experiment",
                                                  sizing_mode="stretch_width")
        form = layout.section("Launch a FORCE experiment", experiment, self.form_holder, self.estimate, launch, width=460,
                              sizing_mode=None)
        side = [layout.section("FORCE runs (click an id)", self.table)]
        title, results = "FORCE: LIF networks vs rate twins", []
        if self.run is not None:
            title = f"FORCE run {self.run.id}: {self.run.config.get('experiment')}"
            side.append(layout.section("Run", self.header))
            results = self._results()
        body = [pn.Row(form, pn.Column(*side, sizing_mode="stretch_width"), sizing_mode="stretch_width"), *results]
        return layout.page(title, "/force", *body, status=self.status)


def _fmt_result(network_result: dict, key: str) -> str:
    """A network result's field; a diverged run's error fields (null in result.json) say "diverged"."""
    if network_result.get("diverged") and key in ("test_error", "log10_error", "rmse", "success"):
        return "diverged"
    return _fmt(network_result.get(key))


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def create(services: Services, feed: LiveFeed) -> pn.Column:
    run_id = layout.query_param("id")
    run = None
    if run_id:
        try:
            run = services.jobs.get_run(run_id)
        except JobsError:
            run = None
    page = ForcePage(services, feed, run if run is not None and run.kind is RunKind.FORCE else None)
    if run_id and page.run is None:
        layout.say(page.status, f"There is no FORCE run <code>{html.escape(run_id)}</code>; pick one below.",
                   "warning")
    return page.view()
