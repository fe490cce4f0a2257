"""What-if: drag a trained run's couplings, input and GABA decay; the network answers.

`/whatif?run=ID` (optionally `&ei=&ie=` to open at a coupling sweep's cell). Each
slider change re-simulates the run's weights (`jobs.whatif`, `engine.whatif`) and
redraws together: the picked image's E|I raster and population rates, the E-rate
spectrum with its gamma peak, per-cell rate histograms, accuracy with its
standard error, and the W_ei x W_ie plane with the trained point, the slider
position and the coupling sweep's nearest cell.

Flow of one change: a slider's `value` (continuous while dragging) is debounced
by DEBOUNCE_S, its `value_throttled` (the release) asks at once; a request goes
through the session's `Latest` (one inference per session, newer supersedes
older) and the server's what-if cap. The frame's arrays are built in the
inference's thread; the document is then changed in one next-tick callback under
Panel's `hold`, so the browser gets one patch message and redraws every figure in
the same animation frame.

The figures are plain Bokeh figures whose data sources are replaced per frame,
not HoloViews DynamicMaps: a HoloViews redraw of five figures costs several
hundred milliseconds of server CPU (docs/dashboard.md), more than this page's
whole budget. Each figure keeps Bokeh's own PNG save tool.
"""

from __future__ import annotations

import asyncio
import html
import json
import threading
import time
from functools import partial
from typing import ClassVar

import numpy as np
import panel as pn
from bokeh.models import ColumnDataSource, DataRange1d, Label, Range1d, Span
from bokeh.plotting import figure
from panel.io.document import hold

from app.api.deps import Services
from app.dashboard import layout
from app.dashboard.plots import E_COLOR, I_COLOR
from engine.config import Config
from engine.stability import UNSTABLE_STEP_FACTOR, CheckStopped
from engine.studies.report import PING_PROMINENCE
from engine.whatif import Knobs, WhatIfResult
from jobs.models import InvalidRequest, JobsError, Run, RunKind, RunState
from jobs.whatif import Latest

DEBOUNCE_S = 0.15
EULER_DELAY_S = 0.5  # the Euler check waits this long after a frame for the sliders to rest
HEIGHT = 240
SWEEP = "coupling_sweep"
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
STAR_COLOR, CURSOR_COLOR = "#d69e2e", "#2f855a"
# the slider ranges (typed values may go beyond, up to the REST limits)
RANGES = {"w_ei_scale": (0.0, 10.0, 0.05), "w_ie_scale": (0.0, 10.0, 0.05), "w_in_scale": (0.0, 3.0, 0.05),
          "max_rate_hz": (0.0, 300.0, 5.0), "tau_gaba_ms": (1.0, 40.0, 0.5)}
LABELS = {"w_ei_scale": "W_ei × (E→I)", "w_ie_scale": "W_ie × (I→E)", "w_in_scale": "W_in × (input)",
          "max_rate_hz": "input max rate (Hz)", "tau_gaba_ms": "τ_GABA (ms)"}
FIXED_END = {"w_ei_scale": 100.0, "w_ie_scale": 100.0, "w_in_scale": 100.0, "max_rate_hz": 1000.0,
             "tau_gaba_ms": 500.0}


class _ReleaseFirstSlider(pn.widgets.FloatSlider):
    """A slider whose release reaches Python at once: Panel holds a browser change for
    `_debounce` (50 ms) to batch it with others, unless it is a priority change."""

    _priority_changes: ClassVar[list[str]] = ["value_throttled"]


class KnobSlider(pn.widgets.EditableFloatSlider):
    """EditableFloatSlider on _ReleaseFirstSlider (a drag's `value` stays debounced)."""

    _slider_widget = _ReleaseFirstSlider


def _figure(title: str, x_label: str, y_label: str, **options) -> figure:
    fig = figure(title=title, height=HEIGHT, sizing_mode="stretch_width", tools=TOOLS, toolbar_location="above",
                 x_axis_label=x_label, y_axis_label=y_label, **options)
    fig.title.text_font_size = "11pt"
    return fig


class WhatIfPage:
    def __init__(self, services: Services, run: Run, start: dict[str, float], sweep: list[dict]):
        self.run, self.whatif, self.sweep = run, services.whatif, sweep
        self.config, _, test = self.whatif.network(run.id)
        self.trained = Knobs().resolved(self.config).to_dict()
        self.status = layout.status_line()
        self.frame = 0
        self._ticket, self._asked = 0, None
        self.doc = pn.state.curdoc
        self.sliders = {}
        for name, (low, high, step) in RANGES.items():
            value = start.get(name, self.trained[name])
            slider = KnobSlider(
                name=LABELS[name], start=low, end=max(high, value), step=step, value=value,
                fixed_start=low if name != "tau_gaba_ms" else 0.1, fixed_end=FIXED_END[name], width=300)
            slider.param.watch(self._dragged, "value")
            slider.param.watch(self._released, "value_throttled")
            self.sliders[name] = slider
        self.sample = pn.widgets.IntInput(name="test image #", value=int(start.get("sample", 0)), start=0,
                                          end=len(test.labels) - 1, width=130)
        self.n_images = pn.widgets.IntInput(name="N images (accuracy, rates)", value=16, start=1, end=256,
                                            width=180)
        for widget in (self.sample, self.n_images):
            widget.param.watch(self._released, "value")
        self.reset_button = pn.widgets.Button(name="Reset to trained", button_type="default")
        self.reset_button.on_click(self.reset)
        self.save_button = pn.widgets.Button(name="Save as run…", button_type="primary")
        self.save_button.on_click(self.show_save_form)
        self.summary = pn.pane.HTML(sizing_mode="stretch_width", css_classes=["whatif-summary"])
        self.euler = pn.pane.HTML("", sizing_mode="stretch_width", css_classes=["whatif-euler"])
        self.save_form = pn.Column(pn.pane.HTML(""), visible=False, sizing_mode="stretch_width")
        self._build_figures()
        self.latest = Latest(self._compute, self._deliver)
        # Forward Euler's check runs the reference loop (about a second per trial), after a
        # frame and in a queue of its own: it waits for the sliders to rest (EULER_DELAY_S)
        # and stops when a new frame is asked for, so a frame never waits behind a check.
        self._euler_stop = threading.Event()
        self.euler_latest = Latest(lambda knobs: self.whatif.euler_check(run.id, knobs,
                                                                         should_stop=self._euler_stop.is_set),
                                   self._deliver_euler)
        self._euler_ticket, self._euler_task = 0, None
        if self.doc is not None:
            pn.state.onload(partial(self.request_now, "load"))

    # --- figures -----------------------------------------------------------------------
    def _build_figures(self) -> None:
        c = self.config
        self.src = {name: ColumnDataSource(data=data, name=name) for name, data in {
            "raster_e": {"t": [], "cell": []}, "raster_i": {"t": [], "cell": []},
            "rates": {"t": [], "e": [], "i": []}, "spectrum": {"f": [], "power": []},
            "histogram": {"left": [], "right": [], "e": [], "i": []},
            "here": {"ei": [], "ie": []}, "near": {"ei": [], "ie": []}}.items()}
        # canvas, not WebGL: a few thousand squares draw in milliseconds, while a WebGL
        # plot is drawn off-screen and copied onto the canvas on every repaint (in a
        # browser without a GPU, in software: the copy alone was a third of the page's
        # repaint time in Chromium)
        self.raster = _figure("Spike raster", "time (ms)", "cell (E below, I above)",
                              x_range=Range1d(0, c.t_ms), y_range=Range1d(0, c.n_e + c.n_i))
        # no legend: the axis label says which band is which, and a legend box hides spikes
        self.raster.scatter("t", "cell", source=self.src["raster_e"], size=2, color=E_COLOR, marker="square")
        self.raster.scatter("t", "cell", source=self.src["raster_i"], size=2, color=I_COLOR, marker="square")
        self.rates = _figure("Population rates (1 ms bins)", "time (ms)", "rate (Hz)", x_range=Range1d(0, c.t_ms))
        self.rates.line("t", "e", source=self.src["rates"], color=E_COLOR, line_width=1.5, legend_label="E")
        self.rates.line("t", "i", source=self.src["rates"], color=I_COLOR, line_width=1.5, legend_label="I")
        self.rates.legend.update(location="top_right", orientation="horizontal", background_fill_alpha=0.7)
        # the titles stay fixed: a changed title re-lays its figure out (the peak has a label)
        # power from 0: a noise floor drawn from its own minimum looks like peaks
        self.spectrum = _figure("E-rate spectrum over the N images", "frequency (Hz)", "power",
                                y_range=DataRange1d(start=0))
        self.spectrum.line("f", "power", source=self.src["spectrum"], color=E_COLOR, line_width=2)
        self.peak = Span(location=0, dimension="height", line_color=STAR_COLOR, line_dash="dashed", line_width=2,
                         visible=False)
        self.peak_label = Label(x=0, y=0, text="", visible=False, x_offset=5, text_baseline="top",
                                text_font_size="10pt", text_color="#444444")
        self.spectrum.add_layout(self.peak)
        self.spectrum.add_layout(self.peak_label)
        self.histogram = _figure("Per-cell rates over the N images", "rate (Hz)", "cells")
        for name, color, label in (("e", E_COLOR, "E"), ("i", I_COLOR, "I")):  # one source: shared bins
            self.histogram.quad(left="left", right="right", top=name, bottom=0, source=self.src["histogram"],
                                fill_color=color, fill_alpha=0.45, line_color=color, legend_label=label)
        self.plane = self._plane()

    def _plane(self) -> figure:
        """W_ei x W_ie: the sweep's cells (colour: total rate), ★ trained, ● here, ○ nearest sweep cell."""
        cells = self.sweep
        top = max([10.0] + [max(c["ei_factor"], c["ie_factor"]) for c in cells])
        plane = _figure("Coupling plane (★ trained, ● here, ○ nearest sweep cell)", "W_ei multiplier",
                        "W_ie multiplier", x_range=Range1d(-0.3, top + 0.3), y_range=Range1d(-0.3, top + 0.3))
        if cells:
            from bokeh.transform import linear_cmap

            totals = [c["rate_total_hz"] for c in cells]
            sweep = ColumnDataSource({"ei": [c["ei_factor"] for c in cells], "ie": [c["ie_factor"] for c in cells],
                                      "total": totals, "acc": [c["test_acc"] for c in cells]})
            plane.scatter("ei", "ie", source=sweep, size=14, marker="square", line_color="white",
                          color=linear_cmap("total", "Inferno256", min(totals), max(totals) or 1.0))
        plane.scatter([1.0], [1.0], size=22, marker="star", fill_color=STAR_COLOR, line_color="black")
        plane.scatter("ei", "ie", source=self.src["near"], size=24, fill_alpha=0, line_color=CURSOR_COLOR,
                      line_width=3)
        plane.scatter("ei", "ie", source=self.src["here"], size=11, color=CURSOR_COLOR, line_color="black")
        return plane

    # --- requests ----------------------------------------------------------------------
    def knobs(self) -> Knobs:
        values = {name: float(s.value) for name, s in self.sliders.items()}
        return Knobs(**values, sample=int(self.sample.value), n_images=int(self.n_images.value))

    async def _dragged(self, _event) -> None:
        self._ticket += 1
        ticket = self._ticket
        await asyncio.sleep(DEBOUNCE_S)
        if ticket == self._ticket:
            await self.request_now("drag")

    async def _released(self, _event) -> None:
        self._ticket += 1  # a pending debounced drag request is covered by this one
        await self.request_now("release")

    async def request_now(self, _why: str = "") -> None:
        try:
            knobs = self.knobs()
        except ValueError as exc:  # a widget outside its range
            layout.say(self.status, f"Not simulated: {exc}", "danger")
            return
        if knobs == self._asked:
            return
        self._asked = knobs
        self._euler_stop.set()  # a running check gives the slot back to this frame
        self._euler_ticket += 1
        await self.latest.request((knobs, time.time()))

    def _compute(self, asked: tuple[Knobs, float]) -> tuple[WhatIfResult, dict, float, dict]:
        knobs, asked_at = asked
        stamps = {"asked": asked_at, "started": time.time()}
        result = self.whatif.compute(self.run.id, knobs)
        started = time.perf_counter()
        data = self._frame_data(result)
        prepare_s = time.perf_counter() - started
        stamps["computed"] = time.time()
        return result, data, prepare_s, stamps

    async def _deliver(self, _asked: tuple[Knobs, float], outcome) -> None:
        if isinstance(outcome, Exception):
            message = str(outcome) if isinstance(outcome, JobsError) else f"{type(outcome).__name__}: {outcome}"
            self.doc.add_next_tick_callback(partial(layout.say, self.status, f"Not simulated: {message}", "danger"))
            return
        self.doc.add_next_tick_callback(partial(self._apply, *outcome))
        self.doc.add_next_tick_callback(partial(self._say_euler, "checking forward Euler on the picked image…"))
        self._euler_task = asyncio.ensure_future(self._check_euler(outcome[0].knobs, self._euler_ticket))

    async def _check_euler(self, knobs: Knobs, ticket: int) -> None:
        await asyncio.sleep(EULER_DELAY_S)
        if ticket == self._euler_ticket:  # no frame asked for since: the sliders rest
            self._euler_stop.clear()
            await self.euler_latest.request(knobs)

    async def _deliver_euler(self, knobs: Knobs, outcome) -> None:
        if isinstance(outcome, CheckStopped):
            return  # a newer frame asked for the slot; its own check follows it
        if isinstance(outcome, Exception):
            text = f"forward Euler not checked: {outcome}"
        elif outcome is None:
            text = "forward Euler: not used by this run (its integrator is exact for held conductances)"
        elif outcome.unstable:
            text = (f"<b>forward Euler unstable here</b>: its step factor dt·g/C reaches "
                    f"{outcome.step_factor_max:.2f} (from {UNSTABLE_STEP_FACTOR:g} on, the membrane update "
                    f"overshoots) on {100 * outcome.unstable_share:.1f} % of the picked image's cell-steps. "
                    "The rates here are the integrator's, not the network's (the coupling sweep crosses "
                    "such cells).")
        else:
            text = (f"forward Euler stable on the picked image: step factor dt·g/C at most "
                    f"{outcome.step_factor_max:.2f} (unstable from {UNSTABLE_STEP_FACTOR:g})")
        unstable = not isinstance(outcome, Exception) and outcome is not None and outcome.unstable
        self.doc.add_next_tick_callback(partial(self._say_euler, text, unstable))

    def _say_euler(self, text: str, unstable: bool = False) -> None:
        colour = "#c53030" if unstable else "#4a5568"
        self.euler.object = f'<p style="color: {colour}; margin: 2px 0">{text}</p>'

    # --- one frame -----------------------------------------------------------------------
    def _frame_data(self, r: WhatIfResult) -> dict:
        """Every data source's new columns, built off the document lock."""
        e_counts, e_edges = np.histogram(r.cell_rates_e_hz, _edges(r.cell_rates_e_hz, r.cell_rates_i_hz))
        i_counts = np.histogram(r.cell_rates_i_hz, e_edges)[0]
        spec = r.spectrum
        ei, ie = r.knobs.w_ei_scale, r.knobs.w_ie_scale
        near = min(self.sweep, key=lambda c: (c["ei_factor"] - ei) ** 2 + (c["ie_factor"] - ie) ** 2, default=None)
        return {
            "raster_e": {"t": r.raster_e.step * r.dt_ms, "cell": r.raster_e.cell},
            "raster_i": {"t": r.raster_i.step * r.dt_ms, "cell": r.raster_i.cell + r.n_e},
            "rates": {"t": r.rate_time_ms, "e": r.population_rate_e_hz, "i": r.population_rate_i_hz},
            "spectrum": {"f": np.asarray(spec.freqs_hz if spec else []), "power": np.asarray(spec.power if spec else [])},
            "histogram": {"left": e_edges[:-1], "right": e_edges[1:], "e": e_counts, "i": i_counts},
            "here": {"ei": [ei], "ie": [ie]},
            "near": {"ei": [near["ei_factor"]], "ie": [near["ie_factor"]]} if near else {"ei": [], "ie": []},
            "_near": near,
        }

    def _apply(self, result: WhatIfResult, data: dict, prepare_s: float, stamps: dict) -> None:
        """The frame's changes to the document, sent as one patch.

        Bokeh's server sends every model change as its own message (each source,
        title and span: a dozen per frame), which the browser applies one by one;
        Panel's `hold` collects them into one patch."""
        with hold(self.doc):
            self._apply_held(result, data, prepare_s, stamps)

    def _apply_held(self, result: WhatIfResult, data: dict, prepare_s: float, stamps: dict) -> None:
        started = time.perf_counter()
        stamps["applied"] = time.time()
        self.frame += 1
        near = data.pop("_near")
        for name, columns in data.items():
            self.src[name].data = columns
        r = result
        rhythm = _rhythm(r)
        self.peak.location, self.peak.visible = (r.gamma_peak_hz or 0.0), rhythm
        if r.gamma_peak_hz is not None:
            self.peak_label.update(x=r.gamma_peak_hz, y=float(np.max(r.spectrum.power)), text=_peak_text(r))
        self.peak_label.visible = r.gamma_peak_hz is not None
        self.raster.title.text = (f"Spike raster, test image {r.knobs.sample} (label {r.label}, "
                                  f"predicted {r.predicted})")
        self.summary.object = self._summary(r, near, prepare_s, time.perf_counter() - started, stamps)
        self.status.visible = False

    def _summary(self, r: WhatIfResult, near: dict | None, prepare_s: float, apply_s: float, stamps: dict) -> str:
        timings = {**{k: round(v, 4) for k, v in r.timings_s.items()}, "prepare": round(prepare_s, 4),
                   "apply": round(apply_s, 4)}
        peak = (_peak_text(r) if r.gamma_peak_hz is not None
                else "none" if r.spectrum is not None else "none (trial too short)")
        rows = [("E | I rate", f'<b class="rate-e">{r.rate_e_hz:.2f}</b> | <b class="rate-i">{r.rate_i_hz:.2f}</b> Hz'),
                ("accuracy", f"{r.accuracy_pct:.1f} % (95 % CI {r.accuracy_ci95_pct[0]:.0f}-"
                             f"{r.accuracy_ci95_pct[1]:.0f} %, N = {r.n_images})"),
                ("gamma peak", peak)]
        if near:
            rows.append((f"sweep cell ({near['ei_factor']:g}, {near['ie_factor']:g})",
                         f"E {near['rate_e_hz']:.2f} | I {near['rate_i_hz']:.2f} Hz, accuracy {near['test_acc']:.1f} %"))
        body = "".join(f"<tr><th>{html.escape(k)}</th><td>{v}</td></tr>" for k, v in rows)
        state = {"frame": self.frame, "knobs": r.knobs.to_dict(), "rate_e_hz": r.rate_e_hz,
                 "rate_i_hz": r.rate_i_hz, "gamma_peak_hz": r.gamma_peak_hz, "rhythm": _rhythm(r),
                 "prominence": r.spectrum.prominence if r.spectrum else None, "timings_s": timings,
                 "stamps": stamps}
        return (f'<table class="kv">{body}</table>'
                f'<div class="whatif-state" data-frame="{self.frame}" data-w_ei_scale="{r.knobs.w_ei_scale!r}" '
                f'data-w_ie_scale="{r.knobs.w_ie_scale!r}" hidden>{html.escape(json.dumps(state))}</div>')

    # --- actions -------------------------------------------------------------------------
    async def reset(self, _event=None) -> None:
        for name, slider in self.sliders.items():
            slider.value = self.trained[name]  # their debounced requests find these knobs asked for already
        self._ticket += 1
        await self.request_now("reset")

    def show_save_form(self, _event=None) -> None:
        """The Runs page's launch form, pre-filled at the slider position: launch a
        run there, or a sweep around it (a JSON grid)."""
        from app.dashboard.config_form import ConfigForm

        form = ConfigForm()
        body = form.panel()
        form.advanced.collapsed = False  # builds every field's widget, so all can be pre-filled
        for name, value in _config_at(self.run, self.knobs()).items():
            if name in form.widgets:
                form.widgets[name].value = list(value) if name == "trainable" else value
        launch = pn.widgets.Button(name="Launch", button_type="primary")
        launch.on_click(lambda _e: self._launch(form))
        self.save_form.objects = [layout.section("Save as run", pn.pane.HTML(_SAVE_HELP), body, launch)]
        self.save_form.visible = True

    def _launch(self, form) -> None:
        form.clear_errors()
        try:
            grid = form.sweep_grid()
        except ValueError as exc:
            form.show_error("sweep_grid", str(exc))
            layout.say(self.status, "The sweep grid is not valid; see the field.", "danger")
            return
        jobs = self.whatif.jobs
        try:
            if grid is None:
                run = jobs.submit_run(form.values())
                message = f'Queued run <a href="/run?id={run.id}">{run.id}</a>.'
            else:
                sweep = jobs.submit_sweep(form.values(), grid)
                message = f"Queued sweep {sweep.id} with {len(sweep.run_ids)} runs."
        except InvalidRequest as exc:
            shown = form.show_error(exc.field, exc.message)
            layout.say(self.status, f"Not launched: {exc.field} {exc.message}" if not shown
                       else "Not launched: a field needs attention (marked below).", "danger")
            return
        layout.say(self.status, message)

    # --- view ----------------------------------------------------------------------------
    def view(self) -> pn.Column:
        rid, c = self.run.id, self.config
        weights, epoch = self.whatif.weights_source(rid)
        # a run still training is simulated at its latest checkpoint, which moves on
        at = (f", weights of epoch {epoch}" if weights == "final" else
              f", still training: its latest checkpoint, epoch {epoch} (reload for a newer one)") if epoch else ""
        source = (f'<p>Trained run <a href="/run?id={rid}">{rid}</a> ({html.escape(str(c.arch).upper())}, '
                  f'{c.n_e} E / {c.n_i} I, {c.t_ms:g} ms trials, seed {c.seed}{at}) · '
                  f'<a href="/coupling?run={rid}">coupling sweep</a>. Slider ticks start at the trained values '
                  f"(multipliers 1, max rate {c.max_rate_hz:g} Hz, τ_GABA {c.tau_gaba_ms:g} ms).</p>")
        controls = pn.Column(*self.sliders.values(), pn.Row(self.sample, self.n_images),
                             pn.Row(self.reset_button, self.save_button), width=340)
        grid = pn.GridBox(pn.pane.Bokeh(self.rates), pn.pane.Bokeh(self.spectrum), pn.pane.Bokeh(self.histogram),
                          pn.pane.Bokeh(self.plane), ncols=2, sizing_mode="stretch_width")
        return layout.page(
            f"What-if: run {rid}", "/whatif",
            layout.section("Network", pn.pane.HTML(source),
                           pn.Row(controls, pn.Column(self.summary, self.euler, pn.pane.Bokeh(self.raster),
                                                      sizing_mode="stretch_width"), sizing_mode="stretch_width")),
            layout.section("Answer", grid), self.save_form, status=self.status)


def _rhythm(r: WhatIfResult) -> bool:
    """Whether the spectrum shows a gamma rhythm: the studies' bound on the peak's
    prominence (peak over median power), PING_PROMINENCE. A noisy asynchronous
    spectrum always has a largest bin, at about twice the median."""
    return r.gamma_peak_hz is not None and r.spectrum.prominence >= PING_PROMINENCE


def _peak_text(r: WhatIfResult) -> str:
    if _rhythm(r):
        return f"{r.gamma_peak_hz:.0f} Hz (prominence {r.spectrum.prominence:.1f})"
    return (f"no rhythm: largest bin {r.gamma_peak_hz:.0f} Hz, prominence {r.spectrum.prominence:.1f} "
            f"< {PING_PROMINENCE:g}")


def _edges(*rates: np.ndarray, bins: int = 30) -> np.ndarray:
    values = np.concatenate([np.asarray(r, dtype=float) for r in rates])
    low, high = float(values.min()), float(values.max())
    return np.linspace(low, high if high > low else low + 1.0, bins + 1)


def _config_at(run: Run, knobs: Knobs) -> dict:
    """A fine-tune of the run at the slider position: its config, started from its
    trained weights times the W_in / W_ei / W_ie multipliers (init_run and the
    init_w_*_scale fields, engine.train.start_weights), with max rate and tau_GABA
    as the sliders say. The strengths are folded in too, so that the config
    describes the network it trains (an opened loop trains undamped, as a fresh
    run with that coupling would)."""
    config = Config.from_dict(run.config)
    # replace() re-resolves the loop's dampening from the new strengths (an explicit one stays)
    return config.replace(init_run=run.id, init_w_in_scale=knobs.w_in_scale, init_w_ei_scale=knobs.w_ei_scale,
                          init_w_ie_scale=knobs.w_ie_scale, ei_strength=config.ei_strength * knobs.w_ei_scale,
                          ie_strength=config.ie_strength * knobs.w_ie_scale,
                          w_in_scale=config.w_in_scale * knobs.w_in_scale, max_rate_hz=knobs.max_rate_hz,
                          tau_gaba_ms=knobs.tau_gaba_ms).to_dict()


_SAVE_HELP = ("<p>A fine-tune of this run from the slider position: it starts from the run's trained weights "
              "with W_in, W_ei and W_ie multiplied as the sliders say (init_run, init_w_*_scale), and the "
              "sliders' max rate and τ_GABA. Edit any field, then launch it as a run, or give a field a list of "
              "values to launch a sweep around this point.</p>")


def _nearest_sweep(services: Services, run_id: str) -> list[dict]:
    """The cells of the run's newest coupling sweep (empty without one)."""
    analyses, _ = services.jobs.list_runs(kind=RunKind.ANALYSIS, limit=1000)
    for analysis in analyses:  # newest first
        if analysis.source_run_id == run_id and analysis.config.get("name") == SWEEP:
            try:
                return json.loads(services.jobs.artifact_path(analysis.id, "result.json").read_text()).get("cells", [])
            except (JobsError, json.JSONDecodeError):
                return []
    return []


def _start(services: Services) -> dict[str, float]:
    start = {}
    for arg, name in (("ei", "w_ei_scale"), ("ie", "w_ie_scale"), ("sample", "sample")):
        raw = layout.query_param(arg)
        try:
            if raw is not None and float(raw) >= 0:
                start[name] = float(raw)
        except ValueError:
            pass
    return start


def create(services: Services, feed=None) -> pn.Column:
    run_id = layout.query_param("run")
    try:
        run = services.jobs.get_run(run_id or "")
        if run.kind is not RunKind.TRAIN:
            raise JobsError(f"run {run_id} is not a train run")
        return WhatIfPage(services, run, _start(services), _nearest_sweep(services, run.id)).view()
    except JobsError as exc:
        runs, _ = services.jobs.list_runs(kind=RunKind.TRAIN, state=RunState.SUCCEEDED, limit=200)
        links = "".join(f'<li><a href="/whatif?run={r.id}">{r.id}</a> · {r.config.get("arch")} seed '
                        f'{r.config.get("seed")} · {r.n_epochs} epochs</li>' for r in runs)
        problem = f"<p>{html.escape(str(exc))}.</p>" if run_id else ""
        # an empty store said "Pick a trained run:" above an empty list
        body = f"<p>Pick a trained run:</p><ul>{links}</ul>" if runs else \
            '<p>No finished training run yet: launch one on the <a href="/">Runs</a> page.</p>'
        return layout.page("What-if", "/whatif", layout.section("Which run?", pn.pane.HTML(problem + body)))
