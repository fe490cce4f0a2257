"""Compare: selected runs overlaid (e.g. PING vs COBA, three seeds each):
trajectories, per-cell rate histograms, the spike budget and the seed table."""

from __future__ import annotations

import html

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn
import param

from app.api.deps import Services
from app.dashboard import layout, plots
from app.dashboard.live import LiveFeed, News
from app.dashboard.run_files import RunFiles
from engine.convergence import WINDOW_EPOCHS
from engine.studies.report import seed_row, spike_budget
from jobs.models import JobsError, Run, RunKind, RunState

MAX_RUNS = 24
ARCH_COLORS = {"ping": plots.E_COLOR, "coba": "#dd6b20"}
DASHES = ("solid", "dashed", "dotted", "dotdash", "dashdot")
LEGEND_LINE_PX, LEGEND_PAD_PX = 23, 30  # a trajectory legend's line, and its box and margin
# a further run of the same arch: its colour mixed toward white (> 0) or black (< 0)
SHADES = (0.0, 0.45, -0.35, 0.7, -0.6)


def _shade(color: str, amount: float) -> str:
    """`color` (#rrggbb) mixed toward white (amount > 0) or black (amount < 0)."""
    rgb = [int(color[i:i + 2], 16) for i in (1, 3, 5)]
    target = 255 if amount > 0 else 0
    return "#" + "".join(f"{round(c + (target - c) * abs(amount)):02x}" for c in rgb)


def run_label(run: Run, with_recipe: bool = False) -> str:
    recipe = f" · {run.config.get('recipe')} recipe" if with_recipe else ""
    return f"{run.config.get('arch', '?').upper()} seed {run.config.get('seed')}{recipe} · {run.id[:6]}"


def _flag(converged, window) -> str:
    """A converged flag as the Run page says it."""
    if pd.isna(window):  # no epoch yet
        return ""
    if converged is None or pd.isna(converged):
        return f"n/a ({int(window)} of {WINDOW_EPOCHS} ep)"  # the slopes need the window
    return "converged" if converged else "still moving"


class ComparePage(param.Parameterized):
    version = param.Integer(default=0, doc="bumped when any compared run gains epochs")

    def __init__(self, services: Services, feed: LiveFeed, runs: list[Run], skipped: list[str] = (), **params):
        super().__init__(**params)
        self.jobs, self.runs, self.skipped = services.jobs, runs, list(skipped)
        # the canonical and the seed's recipe side by side: each label says which
        self.recipes_differ = len({run.config.get("recipe") for run in runs}) > 1
        self.records = {run.id: self.jobs.metrics(run.id) for run in runs}
        self.files = RunFiles(self.jobs)  # rates.npz read once per epoch, not per figure
        self.seed_table = pn.widgets.Tabulator(self._seed_frame(), show_index=False, disabled=True,
                                               sizing_mode="stretch_width", **plots.SEED_TABLE_LAYOUT)
        if pn.state.curdoc:
            key = feed.subscribe(pn.state.curdoc, self._on_news)
            pn.state.on_session_destroyed(lambda _ctx: feed.unsubscribe(key))

    def _on_news(self, news: News) -> None:
        changed = False
        for run in self.runs:
            fresh = [r for r in news.epochs.get(run.id, []) if r["epoch"] > len(self.records[run.id])]
            if fresh:
                self.records[run.id] = self.records[run.id] + fresh
                changed = True
        if changed:
            self.version += 1
            self.seed_table.value = self._seed_frame()

    def _color(self, index: int) -> str:
        """Run `index`'s colour in every figure of the page: its arch's colour, a lighter or
        darker shade of it for each further run of that arch (the trajectories drew PING's
        runs all in blue while the histograms and bars gave the same runs other colours)."""
        base = ARCH_COLORS.get(self.runs[index].config.get("arch"))
        if base is None:
            return plots.SERIES_COLORS[index % len(plots.SERIES_COLORS)]
        return _shade(base, SHADES[self._same_arch_before(index) % len(SHADES)])

    def _same_arch_before(self, index: int) -> int:
        arch = self.runs[index].config.get("arch")
        return sum(r.config.get("arch") == arch for r in self.runs[:index])

    def _style(self, index: int, run: Run) -> dict:
        return {"color": self._color(index), "line_dash": DASHES[self._same_arch_before(index) % len(DASHES)]}

    # --- tables ------------------------------------------------------------------------
    def _label(self, run: Run) -> str:
        return run_label(run, self.recipes_differ)

    def _entry(self, run: Run) -> dict:
        """The run in the shape the study report's functions take."""
        return {"label": run.id, "config": run.config, "metrics": self.records[run.id], "point": {}}

    def _seed_frame(self) -> pd.DataFrame:
        rows = [{**seed_row(self._entry(run)), "state": run.state.value} if self.records[run.id] else
                {"label": run.id, "arch": run.config.get("arch"), "seed": run.config.get("seed"), "epochs": 0,
                 "state": run.state.value} for run in self.runs]
        frame = pd.DataFrame(rows).round(3)
        # a flag is None until the run has the slopes' window of epochs: the cells stood blank
        for column in ("converged_rate_e", "converged_acc"):
            if column in frame:
                frame[column] = [_flag(flag, window) for flag, window in zip(frame[column], frame["slope_window"])]
        frame = frame.drop(columns=["slope_window"], errors="ignore")
        frame.insert(1, "recipe", [run.config.get("recipe") for run in self.runs])
        return frame

    def _budget_frame(self) -> pd.DataFrame:
        """MODEL.md "Spike budget" per run (the study report's, over one run)."""
        rows = [{"run": self._bar_name(run), "measure": label, "rate (Hz)": budget[key]}
                for run in self.runs if self.records[run.id]
                for budget in spike_budget([self._entry(run)])
                for key, label in plots.BUDGET_MEASURES.items()]
        return pd.DataFrame(rows, columns=["run", "measure", "rate (Hz)"])

    def _bar_name(self, run: Run) -> str:
        recipe = f" {run.config.get('recipe')}" if self.recipes_differ else ""
        return f"{run.config.get('arch', '?').upper()} s{run.config.get('seed')}{recipe} {run.id[:4]}"

    def _run_colors(self) -> dict[str, str]:
        """Each run's colour in the budget bars, by bar name (as in the other figures)."""
        return {self._bar_name(run): self._color(i) for i, run in enumerate(self.runs)}

    def _trajectory_frame(self) -> pd.DataFrame:
        frames = [plots.metrics_frame(self.records[run.id]).assign(run=run.id) for run in self.runs]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    # --- figures -----------------------------------------------------------------------
    def _legend_below(self, figure: hv.Overlay) -> hv.Overlay:
        """The legend under the plot, one run a line, the figure taller by its lines: inside,
        the long labels ("PING seed 42 · seed recipe · c82fe5") covered the curves, and in the
        per-cell I histogram PING's bars (30-40 Hz, at the right end beside COBA's silent I)."""
        height = plots.HEIGHT + LEGEND_LINE_PX * len(self.runs) + LEGEND_PAD_PX
        return figure.opts(legend_position="bottom", legend_cols=1, height=height)

    def _overlay(self, column: str, ylabel: str, title: str) -> hv.Overlay:
        layers = []
        for index, run in enumerate(self.runs):
            frame = plots.metrics_frame(self.records[run.id])
            data = frame[["epoch", column]] if column in frame else pd.DataFrame({"epoch": [], column: []})
            layers.append(hv.Curve(data.rename(columns={column: ylabel}), "epoch", ylabel, label=self._label(run))
                          .opts(line_width=2, tools=["hover"], **self._style(index, run)))
        return self._legend_below(hv.Overlay(layers).opts(title=title, **plots.EPOCH_AXIS, **plots.BASE))

    @param.depends("version")
    def accuracy(self):
        return self._overlay("test_acc", "test accuracy (%)", "Test accuracy")

    @param.depends("version")
    def rate_e(self):
        return self._overlay("rate_e_hz", "E rate (Hz)", "E rate")

    @param.depends("version")
    def rate_i(self):
        return self._overlay("rate_i_hz", "I rate (Hz)", "I rate")

    @param.depends("version")
    def loss(self):
        return self._overlay("test_loss", "test loss", "Test loss")

    def _latest_rates(self) -> list[tuple[str, dict[str, np.ndarray] | None]]:
        """(legend label, artifacts/rates.npz or None) per run. The file is rewritten after
        every epoch; the title says which epoch a run still training is at."""
        return [(self._label(run), self.files.npz(run.id, "rates")) for run in self.runs]  # None: no epoch yet

    def _rates_epochs(self, latest) -> str:
        """Which epoch the rates of runs still training are from (in the title: a live plot
        whose layer labels change between updates drew nothing)."""
        epochs = [f"{run.id[:6]} at epoch {int(rates['epoch'])}" for run, (_, rates) in zip(self.runs, latest)
                  if rates and run.state is not RunState.SUCCEEDED and "epoch" in rates]
        return f"; {', '.join(epochs)}" if epochs else ""

    def _cell_rates(self, population: str) -> dict[str, np.ndarray]:
        return {label: rates[f"rate_{population.lower()}_hz"] for label, rates in self._latest_rates() if rates}

    def cell_rates(self, population: str):
        latest = self._latest_rates()
        labels = [label for label, _ in latest]
        samples = {label: rates[f"rate_{population.lower()}_hz"] for label, rates in latest if rates}
        return self._legend_below(plots.histograms(
            samples, labels, title=f"Per-cell {population} rates (last epoch{self._rates_epochs(latest)})",
            xlabel="rate (Hz)", bins=30, missing="none before its first epoch ends",
            colors=[self._color(i) for i in range(len(self.runs))]))

    @param.depends("version")
    def cell_rates_e(self):
        return self.cell_rates("E")

    @param.depends("version")
    def cell_rates_i(self):
        return self.cell_rates("I")

    @param.depends("version")
    def budget(self):
        frame = self._budget_frame()
        return hv.Bars(frame, ["measure", plots.in_given_order(frame, "run")], "rate (Hz)").opts(
            title="Spike budget (each run's last epoch, test set)", tools=["hover"], multi_level=True,
            xrotation=45, cmap=self._run_colors(), color="run", show_legend=False, **{**plots.BASE, "height": 340})

    # --- view --------------------------------------------------------------------------
    def view(self) -> pn.Column:
        f = lambda method, name, frame: plots.figure_panel(hv.DynamicMap(method), method, frame, name)  # noqa: E731
        trajectories = self._trajectory_frame
        grid = lambda *items: pn.GridBox(*items, ncols=2, sizing_mode="stretch_width")  # noqa: E731
        hist_frame = {p: (lambda p=p: plots.histogram_frame(self._cell_rates(p))) for p in ("E", "I")}
        links = " · ".join(f'<a href="/run?id={r.id}">{html.escape(self._label(r))}</a>' for r in self.runs)
        return layout.page(
            f"Compare {len(self.runs)} run{'s' if len(self.runs) != 1 else ''}", "/compare",
            layout.section("Runs", pn.pane.HTML(f"<p>{links}</p>{skipped_note(self.skipped)}"), self.seed_table),
            layout.section("Trajectories", grid(
                f(self.accuracy, "compare-accuracy", trajectories), f(self.loss, "compare-loss", trajectories),
                f(self.rate_e, "compare-rate-e", trajectories), f(self.rate_i, "compare-rate-i", trajectories))),
            layout.section("Rates and spike budget", grid(
                f(self.cell_rates_e, "compare-cell-rates-e", hist_frame["E"]),
                f(self.cell_rates_i, "compare-cell-rates-i", hist_frame["I"])),
                f(self.budget, "compare-spike-budget", self._budget_frame)))


def pick_runs(services: Services, wanted: list[str]) -> tuple[list[Run], list[str]]:
    """The training runs among `wanted`, and a sentence per id left out, saying why."""
    runs, skipped = [], []
    for run_id in wanted:
        try:
            run = services.jobs.get_run(run_id)
        except JobsError:
            skipped.append(f"{run_id} (no such run)")
            continue
        if run.kind is RunKind.TRAIN:
            runs.append(run)
        else:
            what = {RunKind.ANALYSIS: "an analysis", RunKind.FORCE: "a FORCE experiment"}[run.kind]
            skipped.append(f"{run_id} ({what}, not a training run)")
    return runs, skipped


def skipped_note(skipped: list[str]) -> str:
    return f'<p class="muted">Left out: {html.escape(", ".join(skipped))}.</p>' if skipped else ""


def create(services: Services, feed: LiveFeed) -> pn.Column:
    wanted = [i for i in (layout.query_param("runs") or "").split(",") if i][:MAX_RUNS]
    runs, skipped = pick_runs(services, wanted)
    if not runs:
        return layout.page("Compare runs", "/compare", layout.section("Pick runs first", pn.pane.HTML(
            skipped_note(skipped) +
            '<p>Tick two or more runs on the <a href="/">Runs</a> page and press <b>Compare selected</b> '
            "(or open <code>/compare?runs=ID,ID,...</code>).</p>")))
    return ComparePage(services, feed, runs, skipped=skipped).view()
