"""HoloViews figures of the FORCE page: pure functions from result data
(docs/force.md) to elements, in the style of plots.py.

A live figure keeps the same layers for every frame (Bokeh stops updating a
DynamicMap whose structure changes), so each builder draws a fixed set of
layers, empty where there is no data yet.
"""

from __future__ import annotations

import math
from typing import Sequence

import holoviews as hv
import numpy as np
import pandas as pd

from app.dashboard.plots import BASE, CURVE, LAYER, SERIES_COLORS

NETWORKS = ("lif", "rate")
NETWORK_LABELS = {"lif": "LIF", "rate": "rate"}
NETWORK_COLORS = {"lif": "#2b6cb0", "rate": "#c05621"}
TARGET_COLOR = "#1a202c"
MAX_DIMS = 5  # the most output dimensions any task has (Ode to Joy: C D E F G)
SELECTED = dict(marker="square", size=26, fill_alpha=0, line_color="#f6e05e", line_width=4)


def _by_dim(values) -> np.ndarray:
    """(T,) or (T, k) samples as (T, k)."""
    return np.atleast_2d(np.asarray(values, dtype=float).T).T


def _finite(values) -> np.ndarray:
    array = np.asarray([np.nan if v is None else v for v in np.ravel(np.asarray(values, dtype=object))], dtype=float)
    return array[np.isfinite(array)]


# --- training traces ------------------------------------------------------------------------
def traces(data: dict[str, np.ndarray] | None, network: str, phases: dict | None) -> hv.Overlay:
    """Target (dashed) and output (solid) against time, one pair per output
    dimension; the learning phase shaded."""
    data = data or {"t_s": np.zeros(0), "target": np.zeros((0, 1)), "output": np.zeros((0, 1))}
    t = np.asarray(data["t_s"], dtype=float)
    target, output = _by_dim(data["target"]), _by_dim(data["output"])
    layers = []
    for d in range(MAX_DIMS):
        has = d < output.shape[1]
        f, z = (target[:, d], output[:, d]) if has else (np.zeros(0), np.zeros(0))
        x = t if has else np.zeros(0)
        color = NETWORK_COLORS[network] if output.shape[1] == 1 else SERIES_COLORS[d]
        labels = ("target", "output") if d == 0 else ("", "")
        layers.append(hv.Curve((x, f), "time (s)", "signal", label=labels[0]).opts(
            color=TARGET_COLOR, line_dash="dashed", line_width=1.5, alpha=0.8, **LAYER))
        layers.append(hv.Curve((x, z), "time (s)", "signal", label=labels[1]).opts(
            color=color, line_width=1.5, tools=["hover"], **LAYER))
    phases = phases or {}
    start = phases.get("warmup_s", 0.0)
    learning = hv.VSpan(start, start + phases.get("learn_s", 0.0)).opts(color="#f6e05e", alpha=0.15)
    shown = f"{t[-1]:.2f} s" if len(t) else "none yet"
    # explicit limits: the whole run across (the trace grows into it), the data up
    end = sum(phases.get(k, 0.0) for k in ("warmup_s", "learn_s", "test_s")) or 1.0
    return hv.Overlay([*layers, learning]).opts(
        title=f"{NETWORK_LABELS[network]} network: target vs output (shaded: learning; {shown})",
        legend_position="top_right", xlim=(0, end), ylim=_padded(target, output),
        xlabel="time (s)", ylabel="signal", **{**BASE, "height": 280})


def _padded(*arrays: np.ndarray, default: tuple[float, float] = (-1.0, 1.0)) -> tuple[float, float]:
    """Limits around all finite values with 5 % room; `default` when there are none."""
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    values = values[np.isfinite(values)]
    if not len(values):
        return default
    low, high = float(values.min()), float(values.max())
    room = 0.05 * (high - low) or 0.05 * max(abs(high), 1e-12)
    return (low - room, high + room)


def _log_padded(*arrays, default: tuple[float, float] = (1e-6, 1.0)) -> tuple[float, float]:
    """Log-axis limits around all positive finite values (a fifth of a decade of room)."""
    values = np.concatenate([np.asarray(a, dtype=float).ravel() for a in arrays])
    values = values[np.isfinite(values) & (values > 0)]
    if not len(values):
        return default
    return (float(values.min()) / 10 ** 0.2, float(values.max()) * 10 ** 0.2)


def traces_frame(data: dict[str, np.ndarray] | None) -> pd.DataFrame:
    if not data:
        return pd.DataFrame({"t_s": []})
    t = np.asarray(data["t_s"], dtype=float)
    target, output = _by_dim(data["target"]), _by_dim(data["output"])
    columns = {"t_s": t}
    for d in range(output.shape[1]):
        columns[f"target_{d}"], columns[f"output_{d}"] = target[:, d], output[:, d]
    return pd.DataFrame(columns)


# --- decoders -------------------------------------------------------------------------------
def decoder_scatter(decoders: dict[str, np.ndarray] | None, title_prefix: str = "") -> hv.Overlay:
    """phi_rate against phi_lif (every entry), with the least-squares line and r."""
    lif, rate = (np.ravel((decoders or {}).get(f"phi_{n}", np.zeros(0))).astype(float) for n in NETWORKS)
    points = hv.Scatter((lif, rate), "phi_spike (LIF)", "phi_rate").opts(
        color="#4a5568", alpha=0.5, size=4, tools=["hover"], **LAYER)
    fitted = len(lif) > 1 and lif.std() > 0 and rate.std() > 0
    if fitted:
        slope = float(np.dot(lif - lif.mean(), rate - rate.mean()) / np.dot(lif - lif.mean(), lif - lif.mean()))
        r = float(np.corrcoef(lif, rate)[0, 1])
        xs = np.array([lif.min(), lif.max()])
        line = hv.Curve((xs, rate.mean() + slope * (xs - lif.mean())), "phi_spike (LIF)", "phi_rate")
        title = f"{title_prefix}phi_rate vs phi_spike: slope {slope:.3g}, r {r:.3f} (N·k = {len(lif)})"
    else:
        line = hv.Curve((np.zeros(0), np.zeros(0)), "phi_spike (LIF)", "phi_rate")
        why = "no decoders yet" if not len(lif) else "a decoder is all zero"
        title = f"{title_prefix}phi_rate vs phi_spike ({why})"
    return (points * line.opts(color="#d69e2e", line_width=2.5, **LAYER)).opts(
        title=title, xlim=_padded(lif), ylim=_padded(rate), **{**BASE, "height": 320})


def decoder_frame(decoders: dict[str, np.ndarray] | None) -> pd.DataFrame:
    lif, rate = (np.ravel((decoders or {}).get(f"phi_{n}", np.zeros(0))) for n in NETWORKS)
    return pd.DataFrame({"phi_lif": lif, "phi_rate": rate})


# --- Q x G grid -----------------------------------------------------------------------------
GRID_VALUES = {"log10_error": "log10 test error", "decoder_r": "decoder r (phi_spike vs phi_rate)"}


def label(value: float) -> str:
    return f"{value:g}"


def grid_frame(result: dict, q_values: Sequence[float], g_values: Sequence[float]) -> pd.DataFrame:
    """One row per (network, q, g) cell of the grid (values from the run's
    request: the result may not exist yet), NaN where the point is not done
    yet, so the heatmaps keep their categorical axes while they fill in."""
    done = {(p["q"], p["g"]): p for p in result.get("points", [])}
    rows = []
    for network in NETWORKS:
        for q in q_values:
            for g in g_values:
                point = done.get((q, g), {})
                net, fit = point.get(network) or {}, point.get("decoder_fit") or {}
                rows.append({"network": network, "q": q, "g": g, "Q": label(q), "G": label(g),
                             "log10_error": _nan(net.get("log10_error")), "test_error": _nan(net.get("test_error")),
                             "rmse": _nan(net.get("rmse")), "end_rate_hz": _nan(net.get("end_rate_hz")),
                             "decoder_r": _nan(fit.get("r")), "decoder_slope": _nan(fit.get("slope")),
                             "diverged": bool(net.get("diverged"))})
    columns = ["network", "q", "g", "Q", "G", "log10_error", "test_error", "rmse", "end_rate_hz", "decoder_r",
               "decoder_slope", "diverged"]
    return pd.DataFrame(rows, columns=columns)


def _nan(value) -> float:
    return math.nan if value is None else float(value)


def error_range(result: dict) -> tuple[float, float]:
    """One colour scale for both networks' heatmaps, so their cells compare."""
    values = _finite([(p.get(n) or {}).get("log10_error") for p in result.get("points", []) for n in NETWORKS])
    if not len(values):
        return (-6.0, -3.0)
    low, high = float(values.min()), float(values.max())
    return (low, high) if high > low else (low - 0.5, high + 0.5)


def grid_heatmap(result: dict, q_values: Sequence[float], g_values: Sequence[float], network: str | None,
                 value: str, clim: tuple[float, float], selected: tuple[float, float] | None) -> hv.Overlay:
    """G across, Q up, coloured by `value` (network None: per-point values such
    as decoder r); each cell labelled; the selected point outlined."""
    frame = grid_frame(result, q_values, g_values)
    frame = frame[frame["network"] == (network or "lif")]
    vdims = [value] + [v for v in ("test_error", "rmse", "end_rate_hz", "decoder_r", "decoder_slope", "log10_error")
                       if v != value]
    heat = hv.HeatMap(frame, ["G", "Q"], vdims).opts(
        cmap="viridis" if value == "log10_error" else "RdBu_r", clim=clim, colorbar=True,
        clabel=GRID_VALUES[value], tools=["hover", "tap"], xlabel="G (static weight scale)",
        ylabel="Q (feedback scale)", line_color="white", line_width=1, nonselection_alpha=1.0,
        clipping_colors={"NaN": "#edf2f7"})
    digits = ".1f" if value == "log10_error" else ".2f"
    # a diverged point (NaN/inf output) is done, not pending: say so instead of "…"
    text = ["diverged" if diverged and value == "log10_error" else "…" if math.isnan(v) else format(v, digits)
            for v, diverged in zip(frame[value], frame["diverged"])]
    cells = hv.Labels(frame.assign(text=text), ["G", "Q"], "text").opts(text_font_size="8pt", text_color="white")
    chosen = [(label(selected[1]), label(selected[0]))] if selected else []
    marker = hv.Points(chosen, ["G", "Q"]).opts(**SELECTED)
    who = NETWORK_LABELS[network] if network else "both"
    return hv.Overlay([heat, cells, marker]).opts(
        title=f"{who}: {GRID_VALUES[value]}" + (" (click a cell)" if network else ""),
        responsive=True, height=420, framewise=True)


# --- size sweep -----------------------------------------------------------------------------
def _size_rows(result: dict) -> pd.DataFrame:
    rows = [{"n": row["n"], **{f"{net}_error": _nan((row.get(net) or {}).get("test_error")) for net in NETWORKS},
             "decoder_r": _nan((row.get("decoder_fit") or {}).get("r"))} for row in result.get("rows", [])]
    return pd.DataFrame(rows, columns=["n", "lif_error", "rate_error", "decoder_r"])


def size_errors(result: dict) -> hv.Overlay:
    frame, layers = _size_rows(result), []
    for net in NETWORKS:
        data = frame[["n", f"{net}_error"]].rename(columns={f"{net}_error": "test error"})
        color = NETWORK_COLORS[net]
        layers.append(hv.Curve(data, "n", "test error", label=NETWORK_LABELS[net]).opts(color=color, **CURVE))
        layers.append(hv.Scatter(data, "n", "test error", label=NETWORK_LABELS[net]).opts(color=color, size=7, **LAYER))
    return hv.Overlay(layers).opts(title="Test error vs network size N", xlabel="N (neurons)", logx=True, logy=True,
                                   xlim=_log_padded(frame["n"], default=(10, 1e4)),
                                   ylim=_log_padded(frame["lif_error"], frame["rate_error"]),
                                   legend_position="top_right", **BASE)


def size_correlation(result: dict) -> hv.Overlay:
    data = _size_rows(result)[["n", "decoder_r"]].rename(columns={"decoder_r": "r"})
    return (hv.Curve(data, "n", "r").opts(color="#4a5568", **CURVE)
            * hv.Scatter(data, "n", "r").opts(color="#4a5568", size=7, **LAYER)).opts(
        title="Decoder correlation (phi_spike vs phi_rate) vs N", xlabel="N (neurons)", logx=True,
        xlim=_log_padded(data["n"], default=(10, 1e4)), ylim=(-1.05, 1.05), **BASE)


def size_frame(result: dict) -> pd.DataFrame:
    return _size_rows(result)


# --- PCA ------------------------------------------------------------------------------------
def pca_spectrum(result: dict) -> hv.Overlay:
    """Eigenvalues of the filtered rates' second moment, by PC, both networks."""
    layers, spectra = [], []
    for net in NETWORKS:
        values = (result.get("networks", {}).get(net) or {}).get("eigenvalues", [])
        spectra.append(values)
        data = (np.arange(1, len(values) + 1), np.asarray(values, dtype=float))
        layers.append(hv.Curve(data, "PC", "eigenvalue λ", label=NETWORK_LABELS[net]).opts(
            color=NETWORK_COLORS[net], **CURVE))
    return hv.Overlay(layers).opts(title="PCA spectrum of the filtered rates", logy=True, legend_position="top_right",
                                   xlim=(0.5, max(1, *map(len, spectra)) + 0.5), ylim=_log_padded(*spectra), **BASE)


def pca_gains(result: dict, alphas: Sequence[float]) -> hv.Overlay:
    """RLS gain per PC predicted by alpha / (1 + alpha M lambda) for each alpha
    (solid LIF, dashed rate) and P's own diagonal in the PC basis (dots)."""
    layers, shown = [], []
    for net in NETWORKS:
        data = result.get("networks", {}).get(net) or {}
        gains = data.get("gain", {})
        shown += [gains.get(str(a), []) for a in alphas] + [data.get("p_diag_pc", [])]
        for i, alpha in enumerate(alphas):
            values = np.asarray(gains.get(str(alpha), []), dtype=float)
            layers.append(hv.Curve((np.arange(1, len(values) + 1), values), "PC", "gain",
                                   label=f"{NETWORK_LABELS[net]} α={alpha:g}").opts(
                color=SERIES_COLORS[i % len(SERIES_COLORS)], line_dash="solid" if net == "lif" else "dashed",
                line_width=2, **LAYER))
        p_diag = np.asarray(data.get("p_diag_pc", []), dtype=float)
        layers.append(hv.Scatter((np.arange(1, len(p_diag) + 1), p_diag), "PC", "gain",
                                 label=f"{NETWORK_LABELS[net]} diag(P) (run's α)").opts(
            color=NETWORK_COLORS[net], size=4, marker="circle" if net == "lif" else "triangle", **LAYER))
    return hv.Overlay(layers).opts(title="RLS gain per PC: α / (1 + α M λ)", logy=True,
                                   legend_position="bottom_left",
                                   xlim=(0.5, max(1, *map(len, shown)) + 0.5), ylim=_log_padded(*shown),
                                   **{**BASE, "height": 320})


def pca_frame(result: dict) -> pd.DataFrame:
    frames = []
    for net in NETWORKS:
        data = result.get("networks", {}).get(net) or {}
        columns = {"eigenvalue": data.get("eigenvalues", []), "p_diag_pc": data.get("p_diag_pc", []),
                   "decoder_pc": data.get("decoder_pc", []),
                   **{f"gain_alpha_{a}": v for a, v in data.get("gain", {}).items()}}
        frame = pd.DataFrame({k: pd.Series(v, dtype=float) for k, v in columns.items()})
        frames.append(frame.assign(network=net, pc=np.arange(1, len(frame) + 1)))
    return pd.concat(frames, ignore_index=True)
