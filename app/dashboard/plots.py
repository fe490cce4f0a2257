"""HoloViews figures of the dashboard: pure functions from data to elements.

Every page builds its plots here, so a figure looks the same wherever it
appears; `figure_panel` wraps one with its PNG / SVG / CSV downloads.
"""

from __future__ import annotations

import io
from typing import Callable, Sequence

import holoviews as hv
import numpy as np
import pandas as pd
import panel as pn

from engine.stability import UNSTABLE_STEP_FACTOR
from jobs.service import flatten

E_COLOR, I_COLOR, TOTAL_COLOR, ACC_COLOR = "#2b6cb0", "#c53030", "#4a5568", "#2f855a"
UNSTABLE_COLOR = "#00a3c4"  # cyan: seen on inferno's bright (high-rate) end and on viridis
SERIES_COLORS = ("#2b6cb0", "#c53030", "#2f855a", "#b7791f", "#6b46c1", "#2c7a7b", "#97266d", "#4a5568")
# column titles of engine.studies.report.seed_row's rows
SEED_TABLE_TITLES = {"final_acc_pct": "final acc (%)", "final_rate_e_hz": "final E rate (Hz)",
                     "final_rate_i_hz": "final I rate (Hz)", "rate_e_slope_hz_per_epoch": "E-rate slope (Hz/ep)",
                     "acc_slope_pp_per_epoch": "acc slope (pp/ep)", "converged_rate_e": "rate converged",
                     "converged_acc": "acc converged"}
# the columns share the page's width (a long header wraps): laid out by their data, the
# table ran past a 1500-px window with the recipe column, and "state" read "succeedec"
SEED_TABLE_LAYOUT = {"layout": "fit_columns", "titles": SEED_TABLE_TITLES,
                     "configuration": {"columnDefaults": {"headerWordWrap": True, "tooltip": True}}}
BUDGET_MEASURES = {"rate_e_hz": "E", "rate_i_hz": "I", "rate_e_plus_i_hz": "E + I",
                   "per_cell_total_hz": "per-cell total"}
HEIGHT = 260
BASE = dict(responsive=True, height=HEIGHT, framewise=True, show_grid=True, fontscale=0.95)
# An overlay in a DynamicMap rescales its axes on a new frame only if its layers are
# framewise too (the overlay's own option is not enough): without it a plot that
# starts empty keeps axes 0..1 while its glyphs arrive outside them.
LAYER = dict(framewise=True)
CURVE = dict(line_width=2, tools=["hover"], **LAYER)

hv.extension("bokeh", logo=False)


def _whole_epochs(plot, _element) -> None:
    """Epochs are whole: a short run's axis read 1, 1.5, 2, 2.5, 3. Sets the axis's own
    ticker (a new Bokeh model per update would churn the document)."""
    plot.handles["xaxis"].ticker.min_interval = 1


def _whole_epoch_colors(plot, _element) -> None:
    """The epoch colour bar's ticks, whole as well (the bar is the figure's, not a layer's)."""
    for item in plot.state.right:
        if type(item).__name__ == "ColorBar":
            item.ticker.min_interval = 1


# the options of a figure with epochs along x
EPOCH_AXIS = dict(hooks=[_whole_epochs])


def _whole_epochs_exported(plot, _element) -> None:
    """The exported figure's epoch axis, whole too: matplotlib picks its own ticks."""
    from matplotlib.ticker import MaxNLocator

    plot.handles["axis"].xaxis.set_major_locator(MaxNLocator(integer=True))


# the page's hooks that have a matplotlib twin for exports (for_matplotlib)
EXPORTED_HOOKS = {_whole_epochs: _whole_epochs_exported}


def in_given_order(frame: pd.DataFrame, column: str) -> hv.Dimension:
    """A categorical key dimension whose values stand in the frame's order: left to
    HoloViews, grouped bars of five nb024 runs stood in reverse order (it keeps the
    first-seen order of categorical keys only for some names)."""
    return hv.Dimension(column, values=list(dict.fromkeys(frame[column])))


def metrics_frame(records: Sequence[dict]) -> pd.DataFrame:
    """One row per epoch; nested per-weight values become columns (w_norm.W_in, ...)."""
    return pd.DataFrame([flatten(r) for r in records]) if records else pd.DataFrame({"epoch": []})


def trajectories(df: pd.DataFrame, columns: dict[str, str], *, title: str, ylabel: str,
                 colors: Sequence[str] = SERIES_COLORS, logy: bool = False,
                 markers: Sequence[str] | None = None, dashes: Sequence[str] | None = None) -> hv.Overlay:
    """One line with markers per column against epoch; `columns` maps column -> legend label
    (`markers` and `dashes` tell apart the lines that share a colour)."""
    layers = []
    n = len(columns)
    for (column, label), color, marker, dash in zip(columns.items(), colors, markers or ["circle"] * n,
                                                    dashes or ["solid"] * n):
        data = df[["epoch", column]].dropna() if column in df else pd.DataFrame({"epoch": [], column: []})
        data = data.rename(columns={column: ylabel})
        layers.append(hv.Curve(data, "epoch", ylabel, label=label).opts(color=color, line_dash=dash, **CURVE))
        layers.append(hv.Scatter(data, "epoch", ylabel, label=label).opts(color=color, marker=marker, size=5,
                                                                          **LAYER))
    return hv.Overlay(layers).opts(title=title, legend_position="bottom_right", logy=logy, **EPOCH_AXIS, **BASE)


def accuracy_vs_rate(df: pd.DataFrame) -> hv.Overlay:
    """The study's trajectory: test accuracy against E rate, coloured by epoch; an
    open circle marks epoch 1 and a star the last epoch."""
    x, y = "rate_e_hz", "test_acc"
    data = df[["epoch", x, y]] if x in df else pd.DataFrame({"epoch": [], x: [], y: []})
    path = hv.Path([data[[x, y]].to_numpy()], kdims=[x, y]).opts(color="#a0aec0", line_width=1.5, **LAYER)
    points = hv.Scatter(data, x, [y, "epoch"]).opts(color="epoch", cmap="viridis", size=8, colorbar=True,
                                                    tools=["hover"], clabel="epoch", **LAYER)
    first = hv.Scatter(data.iloc[:1], x, y).opts(marker="circle", size=16, fill_alpha=0, line_color="black",
                                                 line_width=2)
    last = hv.Scatter(data.iloc[-1:], x, y).opts(marker="star", size=20, color="#d69e2e", line_color="black")
    return (path * points * first * last).opts(
        title="Accuracy vs E rate (○ epoch 1, ★ last)", xlabel="E rate (Hz)", ylabel="test accuracy (%)",
        show_legend=False, hooks=[_whole_epoch_colors], **BASE)


def histograms(samples: dict[str, np.ndarray], labels: Sequence[str], *, title: str, xlabel: str,
               bins: int = 30, logy: bool = False, colors: Sequence[str] = SERIES_COLORS,
               missing: str | None = None) -> hv.Overlay:
    """Overlaid histograms on shared bin edges, one layer per label (empty when
    `samples` lacks it). Log y draws step outlines: bars cannot start at a log
    axis's zero. `missing` says why a label has no values (e.g. a run still
    training): on a line of the title of its own when some labels have values (on the
    title's line it ran past the plot), in the middle of the plot when none has.

    A live plot (a DynamicMap) keeps the structure of its first frame: every frame
    has the same layers with the same labels (a layer whose label changed was drawn
    as a new, unranged glyph: a run's weight histograms stayed blank until a reload),
    the note included, empty once there is data."""
    finite = {k: np.asarray(v, dtype=float)[np.isfinite(v)] for k, v in samples.items()}
    values = np.concatenate(list(finite.values())) if finite else np.array([])
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 1.0)
    edges = np.linspace(low, high if high > low else low + 1.0, bins + 1)
    layers = []
    for label, color in zip(labels, colors):
        counts = np.histogram(finite[label], edges)[0].astype(float) if label in finite else np.zeros(bins)
        if logy:
            centers = (edges[:-1] + edges[1:]) / 2
            layers.append(hv.Curve((centers, np.where(counts > 0, counts, np.nan)), xlabel, "count", label=label)
                          .opts(interpolation="steps-mid", color=color, line_width=2, tools=["hover"], **LAYER))
        else:
            layers.append(hv.Histogram((edges, counts), kdims=[xlabel], vdims=["count"], label=label).opts(
                fill_color=color, fill_alpha=0.45, line_color=color, tools=["hover"], **LAYER))
    absent = [label for label in labels if label not in finite]
    note = missing if missing and not finite else ""
    if missing and finite and absent:
        title = f"{title}\n{', '.join(absent)}: {missing}"
    # below the legend; once empty, at a height inside the bars' range (not below zero)
    layers.append(hv.Text((low + edges[-1]) / 2, 1 if logy else (-0.5 if note else 0), note).opts(
        color="#718096", text_font_size="11pt"))
    overlay = hv.Overlay(layers)
    if logy and not finite:  # a log axis over no counts has no range: give the note one.
        # Three decades: over two, Bokeh's log ticker labels 1, 2, ..., 10 in a crowd
        overlay = overlay.redim.range(count=(0.1, 100))
    return overlay.opts(title=title, logy=logy, legend_position="top_right", **BASE)


# W_in is sparse at init (95 % of entries exactly 0, MODEL.md) and learns everywhere (no
# relu mask freezes the zeros): its "end" histogram is of the synapses that existed at init,
# and the entries that grew from 0 are a series of their own. Pooled, they drew a tall first
# bin that read as a plotting error, and they carry most of the trained ||W_in||_F
# (seed PING 42: 15.2 of 17.1 after 100 epochs; the init synapses grew x1.27).
WEIGHT_LABELS = ("init", "end", "grown from 0")
WEIGHT_COLORS = ("#a0aec0", E_COLOR, "#dd6b20")


def weight_series(name: str, init: dict[str, np.ndarray] | None,
                  end: dict[str, np.ndarray] | None) -> dict[str, np.ndarray]:
    """The values behind a weight histogram, by WEIGHT_LABELS: all of W_out; W_in's init
    synapses (nonzero at init) at init and at the end, and the end values of the entries
    that were 0 at init and are not now. Without the init file, W_in's nonzero entries."""
    init_w = None if init is None or name not in init else np.asarray(init[name])
    end_w = None if end is None or name not in end else np.asarray(end[name])
    if name != "W_in":
        return {label: w.ravel() for label, w in (("init", init_w), ("end", end_w)) if w is not None}
    series = {}
    synapse = None if init_w is None else init_w != 0
    if init_w is not None:
        series["init"] = init_w[synapse]
    if end_w is not None and (synapse is None or synapse.shape != end_w.shape):
        series["end"] = end_w[end_w != 0]
    elif end_w is not None:
        series["end"] = end_w[synapse]
        grown = end_w[~synapse]
        series["grown from 0"] = grown[grown != 0]
    return series


def histogram_frame(samples: dict[str, np.ndarray]) -> pd.DataFrame:
    """The values behind `histograms`, long form (series, value), for CSV."""
    return pd.concat([pd.DataFrame({"series": label, "value": np.asarray(v, dtype=float)})
                      for label, v in samples.items()], ignore_index=True) if samples else pd.DataFrame()


def raster(data: dict | None) -> hv.Overlay:
    """E cells below, I cells above them; spike times in ms."""
    data = data or {"e_times_ms": [], "e_cells": [], "i_times_ms": [], "i_cells": [], "n_e": 0, "n_i": 0,
                    "t_ms": 1.0}
    title = f"Spike raster (test image {data['sample']}, label {data['label']})" if "sample" in data \
        else "Spike raster (simulate a test image)"
    e = hv.Scatter((data["e_times_ms"], data["e_cells"]), "time (ms)", "cell", label="E").opts(
        color=E_COLOR, size=2, marker="square", **LAYER)
    i_cells = np.asarray(data["i_cells"], dtype=int) + data["n_e"]
    i = hv.Scatter((data["i_times_ms"], i_cells), "time (ms)", "cell", label="I").opts(
        color=I_COLOR, size=2, marker="square", **LAYER)
    # the extent rides on the dimensions (a trial's length, all cells), framewise per layer
    return (e * i).redim.range(**{"time (ms)": (0, data["t_ms"]), "cell": (0, max(data["n_e"] + data["n_i"], 1))}
                               ).opts(title=title, legend_position="top_right", **{**BASE, "height": 320})


def raster_frame(data: dict | None) -> pd.DataFrame:
    if not data:
        return pd.DataFrame({"population": [], "time_ms": [], "cell": []})
    return pd.concat([pd.DataFrame({"population": "E", "time_ms": data["e_times_ms"], "cell": data["e_cells"]}),
                      pd.DataFrame({"population": "I", "time_ms": data["i_times_ms"], "cell": data["i_cells"]})],
                     ignore_index=True)


def population_rate(data: dict | None) -> hv.Curve:
    data = data or {"rate_time_ms": [], "population_rate_hz": []}
    return hv.Curve((data["rate_time_ms"], data["population_rate_hz"]), "time (ms)", "rate (Hz)").opts(
        title="E population rate (1 ms bins)", color=E_COLOR, **{**CURVE, **BASE})


def spectrum(data: dict | None) -> hv.Overlay:
    """Power of the E population rate with the gamma peak marked."""
    spec = (data or {}).get("spectrum")
    title = "Spectrum of the E population rate" + (" (trial too short)" if data and not spec else "")
    spec = spec or {"freqs_hz": [], "power": [], "peak_hz": 0.0, "prominence": 0.0}
    curve = hv.Curve((spec["freqs_hz"], spec["power"]), "frequency (Hz)", "power").opts(color=E_COLOR, **CURVE)
    shown = 1.0 if spec["power"] else 0.0
    peak = hv.VLine(spec["peak_hz"]).opts(color="#d69e2e", line_dash="dashed", line_width=2, alpha=shown)
    label = hv.Text(spec["peak_hz"], max(spec["power"], default=0.0) * 0.95,
                    f" gamma peak {spec['peak_hz']:.0f} Hz, prominence {spec['prominence']:.1f}" if shown else "")
    return (curve * peak * label.opts(text_align="left", text_font_size="9pt")).opts(title=title, **BASE)


def spectrum_frame(data: dict | None) -> pd.DataFrame:
    spec = (data or {}).get("spectrum") or {"freqs_hz": [], "power": []}
    return pd.DataFrame({"frequency_hz": spec["freqs_hz"], "power": spec["power"]})


# --- coupling sweep ----------------------------------------------------------------------
COUPLING_METRICS = {"rate_total_hz": "total rate (Hz)", "rate_e_hz": "E rate (Hz)",
                    "rate_i_hz": "I rate (Hz)", "test_acc": "accuracy (%)"}


# forward Euler's largest step factor dt g_tot / C in a cell (engine.stability); >= 2: unstable
EULER = "euler_step_max"
EULER_DIMENSION = hv.Dimension(EULER, label="forward Euler max dt·g/C")


def factor_label(factor: float) -> str:
    return f"{factor:g}"


def coupling_grid(cells: list[dict], factors: Sequence[float]) -> pd.DataFrame:
    """Every (ei, ie) cell of the sweep, NaN where it has not finished yet: the
    heatmap keeps its categorical axes while it fills in."""
    done = {(c["ei_factor"], c["ie_factor"]): c for c in cells}
    rows = [done.get((ei, ie), {"ei_factor": ei, "ie_factor": ie, **{m: np.nan for m in COUPLING_METRICS}})
            for ie in factors for ei in factors]
    # euler_step_max: None (NaN here) under the exponential Euler and in sweeps made before the check
    frame = pd.DataFrame(rows, columns=["ei_factor", "ie_factor", *COUPLING_METRICS, EULER]).astype(float)
    return frame.assign(W_ei=[factor_label(f) for f in frame["ei_factor"]],
                        W_ie=[factor_label(f) for f in frame["ie_factor"]])


def coupling_heatmap(cells: list[dict], factors: Sequence[float], metric: str) -> hv.Overlay:
    """W_ei multiplier across, W_ie multiplier up; each cell labelled
    "total (E | I)"; a star on the trained point (1, 1); a red cross on each cell
    where forward Euler left its stable range (its rates are the integrator's)."""
    frame = coupling_grid(cells, factors)
    vdims = [metric] + [m for m in COUPLING_METRICS if m != metric] + [EULER_DIMENSION]
    heat = hv.HeatMap(frame, ["W_ei", "W_ie"], vdims).opts(
        cmap="viridis" if metric == "test_acc" else "inferno", colorbar=True, clabel=COUPLING_METRICS[metric],
        tools=["hover", "tap"], xlabel="W_ei multiplier (E→I)", ylabel="W_ie multiplier (I→E)",
        line_color="white", line_width=1, nonselection_alpha=1.0, clipping_colors={"NaN": "#edf2f7"})
    text = ["…" if np.isnan(row.rate_total_hz) else
            f"{row.rate_total_hz:.1f}\n({row.rate_e_hz:.1f} | {row.rate_i_hz:.1f})" for row in frame.itertuples()]
    cell_labels = hv.Labels(frame.assign(text=text, ink=label_ink(frame[metric])), ["W_ei", "W_ie"],
                            ["text", "ink"]).opts(text_font_size="8pt", text_color="ink")
    trained = [("1", "1")] if 1.0 in factors else []
    star = hv.Points(trained, ["W_ei", "W_ie"]).opts(marker="star", size=22, fill_color="#f6e05e",
                                                     line_color="black", fill_alpha=0.9)
    unstable = frame[frame[EULER] >= UNSTABLE_STEP_FACTOR]
    crosses = hv.Points(unstable[["W_ei", "W_ie"]], ["W_ei", "W_ie"], label="forward Euler unstable").opts(
        marker="x", size=30, line_width=3, color=UNSTABLE_COLOR)
    # toolbar above: on the right it covers the colour bar's tick labels
    # the crosses and the star under the labels, which stay readable (as in the export)
    return hv.Overlay([heat, crosses, star, cell_labels]).opts(
        title=f"Coupling sweep: {COUPLING_METRICS[metric]} (labels: total (E | I) Hz){_unstable_note(frame)}",
        responsive=True, height=520, framewise=True, toolbar="above", show_legend=False)


def label_ink(values: pd.Series) -> list[str]:
    """Black on the bright end of the colour map (the top ~45% of inferno and viridis)
    and on unfinished (light grey) cells, white on the dark end."""
    low, high = values.min(), values.max()
    span = (high - low) or 1.0
    return ["black" if np.isnan(v) or (v - low) / span > 0.55 else "white" for v in values]


def _diagonal(cells: list[dict], factors: Sequence[float]) -> pd.DataFrame:
    frame = coupling_grid(cells, factors)
    return frame[frame["ei_factor"] == frame["ie_factor"]].rename(columns={"ei_factor": "multiplier"})


def coupling_diagonal_rates(cells: list[dict], factors: Sequence[float]) -> hv.Overlay:
    """Equal multipliers on both couplings: total, E and I rate."""
    frame, layers = _diagonal(cells, factors), []
    for column, label, color in (("rate_total_hz", "total", TOTAL_COLOR), ("rate_e_hz", "E", E_COLOR),
                                 ("rate_i_hz", "I", I_COLOR)):
        data = frame[["multiplier", column]].rename(columns={column: "rate (Hz)"})
        layers.append(hv.Curve(data, "multiplier", "rate (Hz)", label=label).opts(color=color, **CURVE))
        layers.append(hv.Scatter(data, "multiplier", "rate (Hz)", label=label).opts(color=color, size=6, **LAYER))
    layers.append(_unstable_marks(frame, "rate_total_hz", "rate (Hz)"))
    # the legend beside the plot: inside, any corner covers a study's points (the open loop's
    # high rates at the left, forward Euler's runaway at the right)
    return hv.Overlay(layers).opts(title="Diagonal (W_ei = W_ie multiplier): rates" + _unstable_note(frame),
                                   legend_position="right", **BASE)


def _unstable_marks(frame: pd.DataFrame, column: str, label: str) -> hv.Scatter:
    """The heatmap's cross on the diagonal's points where forward Euler was unstable."""
    data = frame[frame[EULER] >= UNSTABLE_STEP_FACTOR][["multiplier", column]].rename(columns={column: label})
    return hv.Scatter(data, "multiplier", label).opts(
        marker="x", size=16, line_width=3, color=UNSTABLE_COLOR, **LAYER)


def _unstable_note(frame: pd.DataFrame) -> str:
    return " · ×: forward Euler unstable" if (frame[EULER] >= UNSTABLE_STEP_FACTOR).any() else ""


def coupling_diagonal_accuracy(cells: list[dict], factors: Sequence[float]) -> hv.Overlay:
    frame = _diagonal(cells, factors)
    data = frame[["multiplier", "test_acc"]].rename(columns={"test_acc": "accuracy (%)"})
    return (hv.Curve(data, "multiplier", "accuracy (%)").opts(color=ACC_COLOR, **CURVE)
            * hv.Scatter(data, "multiplier", "accuracy (%)").opts(color=ACC_COLOR, size=6, **LAYER)
            * _unstable_marks(frame, "test_acc", "accuracy (%)")).opts(
        title="Diagonal (W_ei = W_ie multiplier): accuracy" + _unstable_note(frame), show_legend=False, **BASE)


# --- exports -------------------------------------------------------------------------------
# Bokeh style options and their matplotlib names: what a figure's colours, line widths
# and dashes were set with, so the exported image looks like the one on the page
MPL_STYLE = {"color": "color", "line_color": "edgecolor", "fill_color": "facecolor", "line_width": "linewidth",
             "fill_alpha": "alpha", "line_dash": "linestyle", "marker": "marker", "cmap": "cmap"}
MPL_DASH = {"dotdash": "dashdot"}
# every marker a page figure uses: a name matplotlib does not know ("diamond") failed the
# export of nb044's dt audit, whose 8 runs take 6 markers
MPL_MARKERS = {"star": "*", "x": "x", "circle": "o", "square": "s", "triangle": "^", "diamond": "D",
               "inverted_triangle": "v", "hex": "h"}
COLOR_OPTIONS = {"color", "line_color", "fill_color"}


def _bokeh_options(element: hv.Element, group: str) -> dict:
    """The options an element was given for the page (Bokeh), of one group ("style", "plot")."""
    return hv.Store.lookup_options("bokeh", element, group).kwargs


def _carry_style(element: hv.Element) -> hv.Element:
    """The element with its Bokeh style options set for matplotlib too (those that
    backend knows for the element; colours only when they are colours, not columns)."""
    from matplotlib.colors import is_color_like

    style = _bokeh_options(element, "style")
    allowed = hv.Store.options(backend="matplotlib")[type(element).__name__].groups["style"].allowed_keywords
    carried = {}
    if _bars_by_inner_key(element) and isinstance(style.get("cmap"), dict):
        # bars coloured by their inner key through a {value: colour} map (a run's colour in
        # every figure): matplotlib took its default palette, so the colours were not the page's
        carried["color"] = hv.dim(style["color"]).categorize(style["cmap"])
    for bokeh_name, mpl_name in MPL_STYLE.items():
        value = style.get(bokeh_name)
        # names and numbers (0.45 alpha, 2 px lines); not dim expressions or arrays. The
        # numbers were dropped: overlaid histograms exported opaque, hiding each other
        if value is None or mpl_name not in allowed or isinstance(value, bool) \
                or not isinstance(value, (str, int, float)):
            continue
        if bokeh_name in COLOR_OPTIONS and not is_color_like(value) and not (
                isinstance(element, hv.Scatter) and value in element.dimensions(label="name")):
            continue  # a column name: only points take it as is (the epoch colour of the trajectories)
        if mpl_name in carried:
            continue  # set above (bars coloured by their inner key)
        if bokeh_name == "fill_alpha" and isinstance(element, hv.Scatter):
            continue  # matplotlib's alpha fades a marker's outline too (below)
        carried[mpl_name] = {"line_dash": MPL_DASH, "marker": MPL_MARKERS}.get(bokeh_name, {}).get(value, value)
    if isinstance(element, hv.Scatter) and style.get("fill_alpha") == 0:
        carried["facecolors"] = "none"  # a hollow marker (the trajectories' "epoch 1" circle)
    if isinstance(style.get("size"), (int, float)) and "s" in allowed:
        carried["s"] = 0.35 * style["size"] ** 2  # a diameter in px on the page, an area in pt^2 here
    if _bokeh_options(element, "plot").get("colorbar"):  # the epoch colour bar of the trajectories
        from matplotlib.ticker import MaxNLocator

        whole = {"cbar_ticks": MaxNLocator(integer=True)} if style.get("color") == "epoch" else {}
        element = element.opts(backend="matplotlib", colorbar=True, **whole)
    return element.opts(backend="matplotlib", **carried) if carried else element


def _bars_by_inner_key(element: hv.Element) -> bool:
    """Grouped bars coloured by their inner key (a run within a measure), or by a column that
    gives each inner key its own colour (nb024's budget: group PING or COBA, coloured by arch),
    whose export names the inner key in a legend. Not a grid of PING points, all one colour."""
    if not isinstance(element, hv.Bars) or len(element.kdims) != 2:
        return False
    color, inner = _bokeh_options(element, "style").get("color"), element.kdims[1].name
    if color == inner:
        return True
    if not isinstance(color, str) or color not in element.dimensions(label="name"):
        return False
    pairs = element.dframe()[[inner, color]].drop_duplicates()
    return len(pairs) == pairs[inner].nunique() == pairs[color].nunique()


def _fit_bars(plot, _element) -> None:
    """The x range around every bar: HoloViews' matplotlib grouped bars cut the outer ones."""
    axis = plot.handles["axis"]
    lefts = [patch.get_x() for patch in axis.patches]
    rights = [patch.get_x() + patch.get_width() for patch in axis.patches]
    if lefts:
        pad = 0.05 * (max(rights) - min(lefts))
        axis.set_xlim(min(lefts) - pad, max(rights) + pad)


def for_matplotlib(figure: hv.Element) -> hv.Element:
    """A page figure as matplotlib draws it for export: its colours, dashes, title and
    log axes, landscape. Without this the export used matplotlib's own colours, so E
    and I swapped colours between the page and the PNG."""
    import holoviews.plotting.mpl  # noqa: F401 (registers the backend; the page's stays Bokeh)

    plot = _bokeh_options(figure, "plot")
    carried = {k: plot[k] for k in ("title", "logy", "logx", "xrotation", "xlabel", "ylabel", "clabel")
               if plot.get(k)}
    hooks = [EXPORTED_HOOKS[hook] for hook in plot.get("hooks", []) if hook in EXPORTED_HOOKS]
    if plot.get("multi_level") and _bars_by_inner_key(figure):
        # grouped bars (the spike budget): matplotlib wrote each bar's name under it over
        # the group's, so the names are a legend and the groups the axis
        carried.update(multi_level=False, show_legend=True, legend_position="right", xrotation=0)
        hooks.append(_fit_bars)
    if hooks:
        carried["hooks"] = hooks
    # a legend beside the plot: matplotlib's own choice ("best") put a W_in histogram's over
    # its init peak, and a corner of the small exported figure covers more than the page's
    if plot.get("show_legend", True) and isinstance(figure, hv.Overlay):
        carried["legend_position"] = "right"
    styled = figure.map(_carry_style, [hv.Curve, hv.Scatter, hv.Histogram, hv.Bars, hv.Area, hv.Path])
    return styled.opts(backend="matplotlib", aspect=1.7, fig_size=150, **carried)


def _heatmap_image(figure: hv.Overlay, buffer: io.BytesIO, fmt: str) -> None:
    """The coupling grid drawn with matplotlib directly: HoloViews' matplotlib heatmap
    orders categorical axes apart from its labels' (numbers landed in the wrong cells)."""
    from matplotlib.figure import Figure

    heat = next(e for e in figure if isinstance(e, hv.HeatMap))
    x, y, value = heat.kdims[0].name, heat.kdims[1].name, heat.vdims[0].name
    frame = heat.dframe()
    xs, ys = list(dict.fromkeys(frame[x])), list(dict.fromkeys(frame[y]))
    grid = frame.pivot(index=y, columns=x, values=value).loc[ys, xs]
    style = _bokeh_options(heat, "style")
    plot = _bokeh_options(heat, "plot")
    out = Figure(figsize=(10, 7.5))
    axes = out.add_subplot()
    image = axes.imshow(grid.to_numpy(dtype=float), origin="lower", aspect="auto", cmap=style.get("cmap", "inferno"))
    axes.set_xticks(range(len(xs)), xs)
    axes.set_yticks(range(len(ys)), ys)
    axes.set_xlabel(plot.get("xlabel", x))
    axes.set_ylabel(plot.get("ylabel", y))
    # the page's markers (the trained point's star, the unstable cells' crosses), under the labels
    for points in (e for e in figure if isinstance(e, hv.Points) and len(e)):
        style, data = _bokeh_options(points, "style"), points.dframe()
        color = style.get("fill_color", style.get("color", "black"))
        axes.scatter([xs.index(v) for v in data[x]], [ys.index(v) for v in data[y]], zorder=2,
                     marker=MPL_MARKERS.get(style.get("marker"), "o"), s=0.35 * style.get("size", 10) ** 2, c=color,
                     **({"edgecolors": style["line_color"]} if style.get("marker") != "x" and "line_color" in style
                        else {}), linewidths=style.get("line_width", 1))
    for labels in (e for e in figure if isinstance(e, hv.Labels)):
        for row in labels.dframe().itertuples(index=False):
            row = row._asdict()
            # smaller on a wide grid: "(123.5 | 251.7)" ran into its neighbours at 9 columns
            axes.text(xs.index(row[x]), ys.index(row[y]), row["text"], ha="center", va="center", zorder=3,
                      fontsize=min(7.0, 56.0 / len(xs)), color=row.get("ink", "white"))
    out.colorbar(image, label=plot.get("clabel", value))
    axes.set_title(_bokeh_options(figure, "plot").get("title", ""))
    out.savefig(buffer, format=fmt, dpi=120, bbox_inches="tight")


def _image(build: Callable[[], hv.Element], fmt: str) -> io.BytesIO:
    buffer = io.BytesIO()
    figure = build()
    try:
        if isinstance(figure, hv.Overlay) and any(isinstance(e, hv.HeatMap) for e in figure):
            _heatmap_image(figure, buffer, fmt)
        else:  # the same element drawn by matplotlib: Bokeh itself needs a browser to export
            hv.save(for_matplotlib(figure), buffer, backend="matplotlib", fmt=fmt, dpi=120)
    except (ValueError, ZeroDivisionError, IndexError, KeyError):
        # matplotlib cannot draw some empty figures (bars with no rows): say so in the file
        from matplotlib.figure import Figure

        buffer = io.BytesIO()
        placeholder = Figure(figsize=(6, 3.5))
        title = _bokeh_options(figure, "plot").get("title", "")
        placeholder.text(0.5, 0.5, f"{title}\nnothing to draw yet", ha="center", va="center")
        placeholder.savefig(buffer, format=fmt)
    buffer.seek(0)
    return buffer


def _csv(frame: Callable[[], pd.DataFrame]) -> io.StringIO:
    return io.StringIO(frame().to_csv(index=False))


def figure_panel(plot, build: Callable[[], hv.Element], frame: Callable[[], pd.DataFrame], name: str,
                 **layout) -> pn.Column:
    """A plot with PNG / SVG / CSV downloads of what it currently shows."""
    downloads = pn.Row(
        *(pn.widgets.FileDownload(callback=cb, filename=f"{name}.{ext}", label=ext.upper(),
                                  button_type="light", button_style="outline", width=64, height=30,
                                  embed=False, css_classes=["export"])
          for ext, cb in (("png", lambda: _image(build, "png")), ("svg", lambda: _image(build, "svg")),
                          ("csv", lambda: _csv(frame)))),
        align="end", margin=(0, 5))
    return pn.Column(pn.pane.HoloViews(plot, sizing_mode="stretch_width", linked_axes=False), downloads,
                     css_classes=["figure"], sizing_mode="stretch_width", **layout)
