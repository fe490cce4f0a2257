"""HoloViews figures of a study's report (engine.studies.report): pure functions
from report data to elements, one per figure of the seed's study.

Every builder returns the same layers for empty and full data (a live plot
keeps its shape while the study fills in); missing values (a run without a
gamma peak) are NaN, which Bokeh leaves out.
"""

from __future__ import annotations

from typing import Any, Sequence

import holoviews as hv
import numpy as np
import pandas as pd

from app.dashboard.plots import (ACC_COLOR, BASE, BUDGET_MEASURES, CURVE, E_COLOR, I_COLOR, SERIES_COLORS,
                                 TOTAL_COLOR, in_given_order)

ARCH_COLORS = {"ping": "#1a202c", "coba": "#c53030"}  # the seed's figures: PING black, COBA red
MARKERS = ("circle", "square", "triangle", "diamond", "inverted_triangle", "hex")
DASHES = ("solid", "dashed", "dotted", "dotdash")  # those matplotlib draws apart too (export)
EI_CLASSES = ("no loop", "stretched COBA", "PING")
EI_CLASS_COLORS = ("#cbd5e0", "#dd6b20", "#2b6cb0")


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def _by_arch(labels: Sequence[str], archs: Sequence[str]) -> bool:
    return len(set(archs)) > 1 and len(labels) <= 2 * len(MARKERS)


def run_colors(labels: Sequence[str], archs: Sequence[str]) -> list[str]:
    """Colour by architecture when runs differ only in arch and seed (nb024), else one colour per run."""
    if _by_arch(labels, archs):
        return [ARCH_COLORS.get(a, TOTAL_COLOR) for a in archs]
    return [SERIES_COLORS[i % len(SERIES_COLORS)] for i in range(len(labels))]


def run_marks(labels: Sequence[str], archs: Sequence[str]) -> tuple[list[str], list[str]]:
    """Each run's marker and line dash. Where run_colors colours by arch, a run's place
    among its arch's runs picks them: the seeds of one arch shared one colour and could
    not be told apart (nb024's ping-seed43 and ping-seed44 drew the same black line)."""
    if not _by_arch(labels, archs):
        return ["circle"] * len(labels), ["solid"] * len(labels)
    places = [archs[:i].count(arch) for i, arch in enumerate(archs)]
    return [MARKERS[p % len(MARKERS)] for p in places], [DASHES[p % len(DASHES)] for p in places]


# --- training -------------------------------------------------------------------------
def wide_frame(metrics: dict[str, list[dict]], column: str) -> pd.DataFrame:
    """epoch x run label for one metric (nested metrics as 'w_norm.W_in')."""
    frame = pd.DataFrame({"epoch": pd.Series(dtype=float)})
    for label, records in metrics.items():
        values = {}
        for r in records:
            value = r
            for key in column.split("."):
                value = value.get(key) if isinstance(value, dict) else None
            values[r["epoch"]] = _num(value)
        series = pd.DataFrame({"epoch": list(values), label: list(values.values())}, dtype=float)
        frame = frame.merge(series, on="epoch", how="outer")
    return frame.sort_values("epoch").reset_index(drop=True)


def accuracy_vs_rate_runs(metrics: dict[str, list[dict]], colors: Sequence[str],
                          dashes: Sequence[str] | None = None) -> hv.Overlay:
    """The seed's trajectory figure: test accuracy against E rate, one path per run;
    an open circle on epoch 1 and a star on the last epoch."""
    x, y = "E rate (Hz)", "test accuracy (%)"
    layers = []
    for (label, records), color, dash in zip(metrics.items(), colors, dashes or ["solid"] * len(metrics)):
        points = np.array([[r["rate_e_hz"], r["test_acc"]] for r in records], dtype=float).reshape(-1, 2)
        layers.append(hv.Curve(points, x, y, label=label).opts(color=color, line_dash=dash, line_width=1.5,
                                                               tools=["hover"]))
        layers.append(hv.Scatter(points[:1], x, y).opts(marker="circle", size=12, fill_alpha=0,
                                                        line_color=color, line_width=2))
        layers.append(hv.Scatter(points[-1:], x, y).opts(marker="star", size=16, color=color,
                                                         line_color="black"))
    # the legend beside the plot, as the page's trajectories have it: inside, its six runs
    # covered COBA's path (which rises to the right, where accuracy is highest)
    return hv.Overlay(layers).opts(title="Accuracy vs E rate per run (○ epoch 1, ★ last)",
                                   legend_position="right", **BASE)


def spike_budget_frame(rows: list[dict]) -> pd.DataFrame:
    """One bar per grid point other than the seed (the report's `group`: "ping" in
    nb024, "ei_strength0.05-ie_strength1.0" in nb036), coloured by its arch."""
    return pd.DataFrame([{"group": str(r.get("group") or r["arch"]).upper(), "arch": r["arch"].upper(),
                          "measure": label, "rate (Hz)": r[key]}
                         for r in rows for key, label in BUDGET_MEASURES.items()],
                        columns=["group", "arch", "measure", "rate (Hz)"])


def spike_budget(rows: list[dict], so_far: bool = False) -> hv.Bars:
    """Per grid point, final epoch, mean over its seeds (MODEL.md "Spike budget"); `so_far`:
    while the study trains, the seeds begun at every grid point at the epoch they share
    (engine.studies.report.spike_budget_so_far; the title says which). Without rows the
    bars are empty and the title says when they come (colouring by arch needs a bar)."""
    title = "Spike budget (final epoch, mean over seeds)"
    if so_far and rows:
        seeds = rows[0]["seeds"]
        title = f"Spike budget so far (epoch {rows[0]['at_epoch']}, seed{'s' if ',' in seeds else ''} {seeds})"
    if not rows:
        when = "when a seed has an epoch at every grid point" if so_far else "when a run finishes"
        return hv.Bars(spike_budget_frame(rows), ["measure", "group"], ["rate (Hz)", "arch"]).opts(
            title=f"{'Spike budget so far' if so_far else title}: {when}", show_legend=False, **BASE)
    frame = spike_budget_frame(rows)
    return hv.Bars(frame, ["measure", in_given_order(frame, "group")], ["rate (Hz)", "arch"]).opts(
        title=title, tools=["hover"], multi_level=True,
        color="arch", cmap={a.upper(): c for a, c in ARCH_COLORS.items()}, show_legend=False, **BASE)


# --- nb041: E rate vs gamma frequency ---------------------------------------------------
def rate_vs_gamma_frame(section: dict) -> pd.DataFrame:
    columns = ["label", "tau_gaba_ms", "gamma_peak_hz", "rate_e_hz", "rate_i_hz", "test_acc"]
    return pd.DataFrame([{c: r.get(c) for c in columns} for r in section.get("rows", [])],
                        columns=columns).astype({c: float for c in columns[1:]})


def rate_vs_gamma(section: dict) -> hv.Overlay:
    """E rate against the gamma peak, one point per retrained run, with the affine fit."""
    x, y = "gamma peak (Hz)", "E rate (Hz)"
    frame = rate_vs_gamma_frame(section).rename(columns={"gamma_peak_hz": x, "rate_e_hz": y})
    fit = section.get("fit")
    xs = frame[x].dropna()
    line = np.array([[v, fit["slope_hz_per_hz"] * v + fit["intercept_hz"]] for v in (xs.min(), xs.max())]) \
        if fit and len(xs) else np.empty((0, 2))
    found = int(frame[x].notna().sum())
    title = (f"E rate vs gamma frequency: slope {fit['slope_hz_per_hz']:.3g} Hz/Hz, R² {fit['r2']:.2f}" if fit
             else f"E rate vs gamma frequency ({found} of {len(frame)} runs with a gamma peak; fit needs 2)")
    return (hv.Scatter(frame, x, [y, "tau_gaba_ms", "label"]).opts(color=E_COLOR, size=10, tools=["hover"])
            * hv.Curve(line, x, y).opts(color=TOTAL_COLOR, line_dash="dashed", line_width=2)
            * hv.Labels(frame.assign(text=[f" τ_GABA {t:g} ms" for t in frame["tau_gaba_ms"]]), [x, y], "text")
            .opts(text_align="left", text_font_size="8pt", text_color="#4a5568")).opts(title=title, **BASE)


# --- nb044: dt audit --------------------------------------------------------------------
def dt_frame(section: dict) -> pd.DataFrame:
    return pd.DataFrame(section.get("rows", []))


def dt_audit(section: dict, labels: Sequence[str], colors: Sequence[str], column: str, ylabel: str,
             title: str) -> hv.Overlay:
    """One line per trained run (its training dt in the legend): `column` at each evaluated dt."""
    frame = dt_frame(section)
    layers = []
    for label, color, marker in zip(labels, colors, _cycle(MARKERS, len(labels))):
        rows = frame[frame["label"] == label] if "label" in frame else frame.iloc[:0]
        data = pd.DataFrame({"dt (ms)": rows.get("dt_ms", pd.Series(dtype=float)).astype(float),
                             ylabel: [_num(v) for v in rows.get(column, [])]})
        layers.append(hv.Curve(data, "dt (ms)", ylabel, label=label).opts(color=color, **CURVE))
        layers.append(hv.Scatter(data, "dt (ms)", ylabel, label=label).opts(color=color, size=7, marker=marker))
    return hv.Overlay(layers).opts(title=title, logx=True, legend_position="right", **BASE)


def _cycle(values: Sequence[str], n: int) -> list[str]:
    return [values[i % len(values)] for i in range(n)]


# --- nb036: the E<->I grid ----------------------------------------------------------------
def ei_grid_frame(section: dict, ei_values: Sequence[float], ie_values: Sequence[float]) -> pd.DataFrame:
    done = {(r["ei_strength"], r["ie_strength"]): r for r in section.get("rows", [])}
    rows = []
    for ie in ie_values:
        for ei in ei_values:
            r = done.get((ei, ie), {})
            rows.append({"ei_strength": ei, "ie_strength": ie, "class": r.get("class", ""),
                         "class_code": EI_CLASSES.index(r["class"]) if r.get("class") in EI_CLASSES else np.nan,
                         "rate_e_hz": _num(r.get("rate_e_hz")), "rate_i_hz": _num(r.get("rate_i_hz")),
                         "gamma_peak_hz": _num(r.get("gamma_peak_hz")),
                         "gamma_prominence": _num(r.get("gamma_prominence")), "test_acc": _num(r.get("test_acc"))})
    return pd.DataFrame(rows)


def ei_grid(section: dict, ei_values: Sequence[float], ie_values: Sequence[float]) -> hv.Overlay:
    """nb036: each trained cell coloured by its class, labelled with its class and E | I rate."""
    frame = ei_grid_frame(section, ei_values, ie_values)
    frame = frame.assign(**{"E→I strength": [f"{v:g}" for v in frame["ei_strength"]],
                            "I→E strength": [f"{v:g}" for v in frame["ie_strength"]]})
    text = ["…" if not c else f"{c}\n{e:.1f} | {i:.1f} Hz" for c, e, i in
            zip(frame["class"], frame["rate_e_hz"], frame["rate_i_hz"])]
    heat = hv.HeatMap(frame, ["E→I strength", "I→E strength"],
                      ["class_code", "class", "rate_e_hz", "rate_i_hz", "gamma_peak_hz", "gamma_prominence",
                       "test_acc"]).opts(
        cmap=list(EI_CLASS_COLORS), clim=(-0.5, len(EI_CLASSES) - 0.5), colorbar=False, tools=["hover"],
        line_color="white", line_width=1, clipping_colors={"NaN": "#edf2f7"})
    labels = hv.Labels(frame.assign(text=text), ["E→I strength", "I→E strength"], "text").opts(
        text_font_size="8pt", text_color="black")
    legend = " · ".join(f"{name}: {color}" for name, color in zip(EI_CLASSES, ("grey", "orange", "blue")))
    return (heat * labels).opts(title=f"E↔I training grid: class per cell ({legend}; labels E | I rate)",
                                responsive=True, height=460, framewise=True)


# --- nb042: phase shuffle -----------------------------------------------------------------
PHASE_CONDITIONS = {"rate_e_hz": "closed loop", "rate_e_replay_hz": "replayed I (check)",
                    "rate_e_shuffled_hz": "phase-shuffled I"}


def phase_shuffle_frame(summary: dict | None) -> pd.DataFrame:
    summary = summary or {}
    return pd.DataFrame([{"condition": label, "E rate (Hz)": _num(summary.get(key))}
                         for key, label in PHASE_CONDITIONS.items()], columns=["condition", "E rate (Hz)"])


def phase_shuffle(summary: dict | None) -> hv.Bars:
    factor = (summary or {}).get("release_factor")
    title = "Phase shuffle: E rate" + (f" (release factor {factor:.2f}×)" if factor is not None else "")
    return hv.Bars(phase_shuffle_frame(summary), "condition", "E rate (Hz)").opts(
        title=title, color="condition", cmap=dict(zip(PHASE_CONDITIONS.values(), (E_COLOR, "#a0aec0", I_COLOR))),
        tools=["hover"], show_legend=False, **BASE)


# --- nb037: drop / add spikes ---------------------------------------------------------------
def drop_add_frame(cells: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(cells)


def drop_add(cells: list[dict], column: str, ylabel: str, title: str) -> hv.Overlay:
    """Drop and add curves against the perturbed fraction, both starting from the
    unperturbed run at fraction 0."""
    frame = drop_add_frame(cells)
    base = frame[frame["mode"] == "none"] if "mode" in frame else frame.iloc[:0]
    layers = []
    for mode, color in (("drop", E_COLOR), ("add", I_COLOR)):
        rows = pd.concat([base, frame[frame["mode"] == mode]]) if "mode" in frame else frame.iloc[:0]
        data = pd.DataFrame({"fraction": rows.get("fraction", pd.Series(dtype=float)).astype(float),
                             ylabel: [_num(v) for v in rows.get(column, [])]}).sort_values("fraction")
        layers.append(hv.Curve(data, "fraction", ylabel, label=mode).opts(color=color, **CURVE))
        layers.append(hv.Scatter(data, "fraction", ylabel, label=mode).opts(color=color, size=7))
    return hv.Overlay(layers).opts(title=title, legend_position="right", **BASE)


# --- nb038: f-I curves -----------------------------------------------------------------------
FI_LINES = (("closed", "rate_e_hz", "E, loop closed", E_COLOR, "solid"),
            ("open", "rate_e_hz", "E, loop open (I→E cut)", E_COLOR, "dashed"),
            ("closed", "rate_i_hz", "I, loop closed", I_COLOR, "solid"),
            ("open", "rate_i_hz", "I, loop open", I_COLOR, "dashed"))


def fi_frame(cells: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(cells)


def fi_curves(cells: list[dict]) -> hv.Overlay:
    """E and I rate against the input-rate scale with the loop open and closed."""
    frame, layers = fi_frame(cells), []
    x, y = "input scale", "rate (Hz)"
    for loop, column, label, color, dash in FI_LINES:
        rows = frame[frame["loop"] == loop] if "loop" in frame else frame.iloc[:0]
        data = pd.DataFrame({x: rows.get("input_scale", pd.Series(dtype=float)).astype(float),
                             y: [_num(v) for v in rows.get(column, [])]}).sort_values(x)
        layers.append(hv.Curve(data, x, y, label=label).opts(color=color, line_dash=dash, **CURVE))
        layers.append(hv.Scatter(data, x, y, label=label).opts(color=color, size=6))
    return hv.Overlay(layers).opts(title="f-I curves: rate vs input, loop open and closed",
                                   legend_position="top_left", **BASE)


def fi_accuracy(cells: list[dict]) -> hv.Overlay:
    frame, layers = fi_frame(cells), []
    x, y = "input scale", "accuracy (%)"
    for loop, dash in (("closed", "solid"), ("open", "dashed")):
        rows = frame[frame["loop"] == loop] if "loop" in frame else frame.iloc[:0]
        data = pd.DataFrame({x: rows.get("input_scale", pd.Series(dtype=float)).astype(float),
                             y: [_num(v) for v in rows.get("test_acc", [])]}).sort_values(x)
        layers.append(hv.Curve(data, x, y, label=f"loop {loop}").opts(color=ACC_COLOR, line_dash=dash, **CURVE))
    return hv.Overlay(layers).opts(title="f-I: accuracy vs input, loop open and closed",
                                   legend_position="top_left", **BASE)


def loop_transfer(cells: list[dict], columns: tuple[tuple[str, str, str], ...], ylabel: str, title: str
                  ) -> hv.Overlay:
    """nb038's loop transfer: `columns` (column, label, colour) against the strength of
    the fresh loop (x the PING strengths)."""
    frame, layers = pd.DataFrame(cells), []
    x = "loop strength (x PING)"
    for column, label, color in columns:
        data = pd.DataFrame({x: frame.get("loop_scale", pd.Series(dtype=float)).astype(float),
                             ylabel: [_num(v) for v in frame.get(column, [])]}).sort_values(x)
        layers.append(hv.Curve(data, x, ylabel, label=label).opts(color=color, **CURVE))
        layers.append(hv.Scatter(data, x, ylabel, label=label).opts(color=color, size=6))
    return hv.Overlay(layers).opts(title=title, legend_position="top_right", **BASE)


LOOP_TRANSFER_RATES = (("rate_e_hz", "E", E_COLOR), ("rate_i_hz", "I", I_COLOR))
LOOP_TRANSFER_ACC = (("test_acc", "accuracy", ACC_COLOR),)
