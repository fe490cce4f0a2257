"""The dashboard's figures in Python (fast; the browser tests check the pages): each
builder renders empty and filled, and a live figure's axes follow its data."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import pandas as pd
import param
import pytest

from app.dashboard import plots

RASTER = {"e_times_ms": [5.0, 50.0], "e_cells": [3, 700], "i_times_ms": [20.0], "i_cells": [5], "n_e": 800,
          "n_i": 200, "t_ms": 100.0, "sample": 0, "label": 7, "rate_time_ms": [0.5, 1.5],
          "population_rate_hz": [1.0, 2.0],
          "spectrum": {"freqs_hz": [10.0, 40.0], "power": [1.0, 3.0], "peak_hz": 40.0, "prominence": 2.0}}
CELLS = [{"ei_factor": ei, "ie_factor": ie, "rate_total_hz": 5.0 + 10 * ei + ie, "rate_e_hz": 3.0,
          "rate_i_hz": 9.0, "test_acc": 50.0} for ei in (0.0, 1.0, 2.0) for ie in (0.0, 1.0, 2.0)]


def live_plot(build, empty):
    """A DynamicMap of a param method, as the pages build it, and a way to push data."""
    class Page(param.Parameterized):
        data = param.Parameter(default=empty)

        @param.depends("data")
        def figure(self):
            return build(self.data)

    page = Page()
    return page, hv.renderer("bokeh").get_plot(hv.DynamicMap(page.figure))


def test_the_studies_accuracy_vs_rate_legend_stands_beside_the_plot():
    """Inside, a study's six runs' legend covered COBA's path at its high-rate, high-accuracy end."""
    from bokeh.models import Legend

    from app.dashboard import study_plots

    metrics = {f"run{i}": [{"rate_e_hz": 10.0 * i + e, "test_acc": 50.0 + e} for e in range(3)] for i in range(6)}
    figure = hv.render(study_plots.accuracy_vs_rate_runs(metrics, ["#000000"] * 6))
    assert [type(x) for x in figure.right if isinstance(x, Legend)] == [Legend]
    assert not [x for x in figure.center if isinstance(x, Legend)]


def test_the_diagonal_legend_stands_beside_the_plot():
    """Inside, at the top left, it covered the open loop's points (the seed run's 113 Hz)."""
    from bokeh.models import Legend

    figure = hv.render(plots.coupling_diagonal_rates(CELLS, [0.0, 1.0, 2.0]))
    assert [type(x) for x in figure.right if isinstance(x, Legend)] == [Legend]
    assert not [x for x in figure.center if isinstance(x, Legend)]


@pytest.mark.parametrize("data", [None, RASTER])
def test_every_figure_renders_empty_and_filled(data):
    renderer = hv.renderer("bokeh")
    for build in (plots.raster, plots.population_rate, plots.spectrum):
        renderer.get_plot(build(data))
    cells = CELLS if data else []
    renderer.get_plot(plots.coupling_heatmap(cells, [0.0, 1.0, 2.0], "rate_total_hz"))
    renderer.get_plot(plots.coupling_diagonal_rates(cells, [0.0, 1.0, 2.0]))
    renderer.get_plot(plots.coupling_diagonal_accuracy(cells, [0.0, 1.0, 2.0]))
    frame = plots.metrics_frame([{"epoch": 1, "test_acc": 10.0, "rate_e_hz": 3.0}] if data else [])
    renderer.get_plot(plots.trajectories(frame, {"test_acc": "test"}, title="t", ylabel="y"))
    renderer.get_plot(plots.histograms({"E": np.array([1.0, 2.0])} if data else {}, ["E"], title="h", xlabel="x"))


def test_a_live_raster_spans_the_trial_and_every_cell_once_it_has_spikes():
    """It kept the empty figure's axes (0..1), so no spike showed."""
    page, plot = live_plot(plots.raster, None)
    page.data = RASTER
    x, y = plot.handles["x_range"], plot.handles["y_range"]
    assert (x.start, x.end, y.start, y.end) == (0, 100.0, 0, 1000)


def test_the_live_diagonal_rescales_as_cells_arrive():
    page, plot = live_plot(lambda cells: plots.coupling_diagonal_rates(cells, [0.0, 1.0, 2.0]), [])
    page.data = CELLS
    assert plot.handles["x_range"].end >= 2.0 and plot.handles["y_range"].end >= 25.0


def test_cell_labels_are_dark_on_bright_cells_and_light_on_dark_ones():
    ink = plots.label_ink(plots.coupling_grid(CELLS[:2], [0.0, 1.0, 2.0])["rate_total_hz"])
    # two finished cells, the brighter (higher) one in black; unfinished cells (NaN, light grey) black
    finished = plots.coupling_grid(CELLS[:2], [0.0, 1.0, 2.0])["rate_total_hz"].notna().to_numpy()
    assert sorted(np.asarray(ink)[finished]) == ["black", "white"] and set(np.asarray(ink)[~finished]) == {"black"}


def test_the_spike_budget_draws_one_bar_group_per_grid_point_not_per_arch():
    """nb036's grid points are all PING: keyed on arch, their bars would sit on top
    of each other (one visible bar for many points)."""
    from app.dashboard import study_plots

    rows = [{"group": f"ei_strength{ei}-ie_strength1.0", "arch": "ping", "rate_e_hz": 10.0 + ei,
             "rate_i_hz": 2.0, "rate_e_plus_i_hz": 12.0 + ei, "per_cell_total_hz": 8.0} for ei in (0.0, 0.05)]
    figure = hv.render(study_plots.spike_budget(rows))
    factors = figure.x_range.factors
    assert {f[1] for f in factors} == {"EI_STRENGTH0.0-IE_STRENGTH1.0", "EI_STRENGTH0.05-IE_STRENGTH1.0"}
    assert len(factors) == 2 * len(plots.BUDGET_MEASURES)


def test_the_spike_budget_of_a_study_without_finished_runs_renders_empty():
    """A study's first hours: no run finished, no budget rows (colouring by arch
    raised on the empty frame and the whole Studies page showed a traceback)."""
    from app.dashboard import study_plots

    figure = hv.render(study_plots.spike_budget([]))
    assert figure.title.text.endswith("when a run finishes")


def test_the_spike_budget_so_far_says_which_seeds_and_epoch_it_compares():
    """A study at the seed's scale trains for days; its budget so far compares the seeds
    begun at every grid point at the epoch they share, and the title says which."""
    from app.dashboard import study_plots

    rows = [{"group": "ping", "arch": "ping", "epochs": "55", "rate_e_hz": 8.0, "rate_i_hz": 36.0,
             "rate_e_plus_i_hz": 44.0, "per_cell_total_hz": 13.6, "seeds": "42", "at_epoch": 55},
            {"group": "coba", "arch": "coba", "epochs": "55", "rate_e_hz": 69.6, "rate_i_hz": 0.0,
             "rate_e_plus_i_hz": 69.6, "per_cell_total_hz": 55.7, "seeds": "42", "at_epoch": 55}]
    figure = hv.render(study_plots.spike_budget(rows, so_far=True))
    assert figure.title.text == "Spike budget so far (epoch 55, seed 42)"
    assert hv.render(study_plots.spike_budget(rows)).title.text == "Spike budget (final epoch, mean over seeds)"
    both = [dict(r, seeds="42, 43") for r in rows]
    assert hv.render(study_plots.spike_budget(both, so_far=True)).title.text == "Spike budget so far (epoch 55, seeds 42, 43)"
    none_yet = hv.render(study_plots.spike_budget([], so_far=True)).title.text
    assert none_yet == "Spike budget so far: when a seed has an epoch at every grid point"



def test_a_studys_spike_budget_keeps_its_grid_order():
    """nb036's grid points as the report lists them, not in HoloViews' own order of names
    (which reversed five runs' bars on the Compare page)."""
    from app.dashboard import study_plots

    groups = ["ei_strength0.2-ie_strength1.0", "ei_strength0.05-ie_strength2.0", "ei_strength1.0-ie_strength0.5"]
    rows = [{"group": g, "arch": "ping", "rate_e_hz": 8.0, "rate_i_hz": 36.0, "rate_e_plus_i_hz": 44.0,
             "per_cell_total_hz": 13.6} for g in groups]
    factors = hv.render(study_plots.spike_budget(rows)).x_range.factors
    assert [str(g) for m, g in factors if m == "E"] == [g.upper() for g in groups]

def test_a_studys_progress_counts_its_runs_by_state():
    """It read "6 of 6 runs queued" while two of them were running."""
    from types import SimpleNamespace

    from app.dashboard.studies_page import _member_counts
    from jobs.models import RunState

    members = [SimpleNamespace(state=s) for s in (RunState.QUEUED, RunState.RUNNING, RunState.QUEUED, None)]
    study = SimpleNamespace(members=members, expected_runs=6)
    assert _member_counts(study) == "4 of 6 runs launched: 1 running, 2 queued, 1 deleted"


def test_the_heatmap_draws_each_label_in_its_own_ink():
    """The rendered Bokeh figure maps the label glyph's colour to the per-cell ink
    column (not one colour for all), so dark text sits on the bright cells."""
    from bokeh.models import GlyphRenderer, Text

    figure = hv.render(plots.coupling_heatmap(CELLS[:2], [0.0, 1.0, 2.0], "rate_total_hz"))
    (labels,) = [r for r in figure.renderers if isinstance(r, GlyphRenderer) and isinstance(r.glyph, Text)]
    column = labels.glyph.text_color.field
    inks = list(labels.data_source.data[column])
    assert inks == plots.label_ink(plots.coupling_grid(CELLS[:2], [0.0, 1.0, 2.0])["rate_total_hz"])
    assert {"black", "white"} <= set(inks)


def test_the_loop_transfer_figures_draw_partial_and_full_sweeps():
    """nb038's transfer curves: one line per column, sorted by loop strength, also before
    any cell has arrived (the study page draws while the analysis runs)."""
    from app.dashboard import study_plots

    cells = [{"loop_scale": s, "rate_e_hz": 80.0 - 50 * s, "rate_i_hz": 30 * s, "test_acc": 85.0 - s}
             for s in (1.0, 0.0, 0.5)]
    rates = study_plots.loop_transfer(cells, study_plots.LOOP_TRANSFER_RATES, "rate (Hz)", "rates")
    curves = [layer for layer in rates if isinstance(layer, hv.Curve)]
    assert [c.label for c in curves] == ["E", "I"]
    assert list(curves[0].dimension_values(0)) == [0.0, 0.5, 1.0]
    assert list(curves[1].dimension_values(1)) == [0.0, 15.0, 30.0]
    for built in (rates, study_plots.loop_transfer([], study_plots.LOOP_TRANSFER_ACC, "accuracy (%)", "acc")):
        hv.render(built)


def test_histograms_say_why_a_series_is_empty():
    """A run still training has no per-cell rates: an all-empty plot says why in its
    middle instead of drawing a bare zero line; a plot with some series says in its
    title (a line of its own) which are missing and why. The layer labels never change."""
    renderer = hv.renderer("bokeh")
    empty = plots.histograms({}, ["E"], title="Per-cell E rates", xlabel="rate (Hz)", missing="written when done")
    assert [t.text for t in empty if isinstance(t, hv.Text)] == ["written when done"]
    assert [e.label for e in empty if isinstance(e, hv.Histogram)] == ["E"]
    renderer.get_plot(empty)
    partial = plots.histograms({"a": np.array([1.0, 2.0, 2.5])}, ["a", "b"], title="t", xlabel="x", logy=True,
                               missing="pending")
    assert [e.label for e in partial if isinstance(e, hv.Curve)] == ["a", "b"]
    assert [t.text for t in partial if isinstance(t, hv.Text)] == [""]  # no middle note: one series has values
    assert partial.opts.get().kwargs["title"] == "t\nb: pending"  # a line of its own
    renderer.get_plot(partial)
    plain = plots.histograms({}, ["E"], title="t", xlabel="x")
    assert [e.label for e in plain if isinstance(e, hv.Histogram)] == ["E"]


@pytest.mark.parametrize("logy", [True, False])
def test_a_live_histogram_draws_its_first_data_into_the_same_glyphs(logy):
    """The Run page's weight histograms (log y) opened before the run's first checkpoint
    stayed blank as the data arrived: the legend label changed from "end (written
    after ...)" to "end", so HoloViews added new glyphs outside the axes it kept."""
    rng = np.random.default_rng(0)
    samples = {}
    stream = hv.streams.Counter()
    live = hv.DynamicMap(lambda counter: plots.histograms(samples, ["init", "end"], title="W", xlabel="w", logy=logy,
                                                          bins=20, missing="written after its first epoch"),
                         streams=[stream])
    plot = hv.renderer("bokeh").get_plot(live)
    figure = plot.state
    glyphs = list(figure.renderers)
    if logy:  # the empty plot's note needs a log range to stand on (0..1 drew nothing)
        assert 0 < figure.y_range.start < 1 < figure.y_range.end
        # ... of three decades or more: over two (0.1..10), BokehJS labelled 1, 2, ..., 10 in a crowd
        assert figure.y_range.end / figure.y_range.start >= 1000
    samples.update(init=rng.normal(size=500), end=3.0 * rng.normal(size=500))
    stream.event(counter=1)
    assert list(figure.renderers) == glyphs  # the same glyphs, now holding the data
    counts = [np.nansum(np.asarray(r.data_source.data["count"], dtype=float)) for r in glyphs[:2]]
    assert all(c > 0 for c in counts)
    assert figure.x_range.start < -5 and figure.x_range.end > 5  # the axes follow the data
    assert figure.y_range.end > 10
    assert list(glyphs[2].data_source.data["text"]) == [""]  # the note is gone


def test_an_exported_figure_keeps_the_pages_colours_and_title():
    """PNG / SVG exports are drawn by matplotlib: the page's E blue and I red, the
    title and the log axis go with them (they came out in matplotlib's own colours)."""
    exported = plots.for_matplotlib(plots.coupling_diagonal_rates(CELLS, [0.0, 1.0, 2.0]))
    colours = {e.label: hv.Store.lookup_options("matplotlib", e, "style").kwargs.get("color")
               for e in exported if isinstance(e, hv.Curve)}
    assert colours == {"total": plots.TOTAL_COLOR, "E": plots.E_COLOR, "I": plots.I_COLOR}
    assert hv.Store.lookup_options("matplotlib", exported, "plot").kwargs["title"].startswith("Diagonal")
    weights = plots.for_matplotlib(plots.histograms({"init": np.array([0.1, 0.2])}, ["init"], title="W", xlabel="w",
                                                    logy=True, colors=("#a0aec0",)))
    assert hv.Store.lookup_options("matplotlib", weights, "plot").kwargs.get("logy") is True
    png = plots._image(lambda: plots.coupling_diagonal_rates(CELLS, [0.0, 1.0, 2.0]), "png").getvalue()
    assert png.startswith(b"\x89PNG")
    assert hv.Store.current_backend == "bokeh"  # the page's figures stay Bokeh's
    from app.dashboard import study_plots  # matplotlib cannot draw empty bars: a file that says so

    assert plots._image(lambda: study_plots.spike_budget([]), "png").getvalue().startswith(b"\x89PNG")
    heatmap = plots._image(lambda: plots.coupling_heatmap(CELLS, [0.0, 1.0, 2.0], "rate_total_hz"), "svg").getvalue()
    assert b"27.0" in heatmap and b"W_ei multiplier" in heatmap  # the (2, 2) cell's label, the page's axis title


def test_the_live_force_decoder_scatter_fits_decoders_that_arrive_after_the_page():
    """A FORCE page opened while its run learned kept the empty figure's -1..1 axes, so
    the 200 decoder entries (about 1e-3 each) drew as one dot at 0 until a reload."""
    from app.dashboard import force_plots

    rng = np.random.default_rng(0)
    lif = rng.normal(0.0, 5e-4, size=(200, 1))
    decoders = {"phi_lif": lif, "phi_rate": 0.6 * lif + rng.normal(0.0, 3e-4, size=(200, 1))}
    page, plot = live_plot(force_plots.decoder_scatter, None)
    page.data = decoders
    x, y = plot.handles["x_range"], plot.handles["y_range"]
    assert x.start <= lif.min() and x.end >= lif.max() and x.end - x.start < 0.1, (x.start, x.end)
    assert y.start <= decoders["phi_rate"].min() and y.end - y.start < 0.1, (y.start, y.end)


def test_the_live_force_traces_rescale_to_an_output_beyond_the_target():
    from app.dashboard import force_plots

    t = np.arange(0, 1.0, 1e-3)
    data = {"t_s": t, "target": np.sin(2 * np.pi * 5 * t)[:, None], "output": 3 * np.sin(2 * np.pi * 5 * t)[:, None]}
    phases = {"warmup_s": 0.5, "learn_s": 0.5, "test_s": 0.0}
    page, plot = live_plot(lambda d: force_plots.traces(d, "lif", phases), None)
    page.data = data
    y = plot.handles["y_range"]
    assert y.start <= -3.0 and y.end >= 3.0, (y.start, y.end)


def test_cells_past_forward_eulers_stable_range_are_crossed():
    """A cell whose dt g/C reached 2 ran away numerically: a cross on it in the rendered
    figure, and a note in the title; none where the sweep stayed stable (or has no check)."""
    from bokeh.models import GlyphRenderer, Scatter

    checked = [dict(c, euler_step_max=20.0 if c["ei_factor"] == c["ie_factor"] == 2.0 else 0.3) for c in CELLS]

    def crosses(cells):
        figure = hv.render(plots.coupling_heatmap(cells, [0.0, 1.0, 2.0], "rate_total_hz"))
        marked = [r for r in figure.renderers if isinstance(r, GlyphRenderer) and isinstance(r.glyph, Scatter)
                  and r.glyph.marker == "x"]
        points = [list(zip(r.data_source.data["W_ei"], r.data_source.data["W_ie"])) for r in marked]
        return figure.title.text, sum(points, [])

    title, points = crosses(checked)
    assert points == [("2", "2")] and title.endswith("×: forward Euler unstable")
    for stable in (CELLS, [dict(c, euler_step_max=1.9) for c in CELLS], [dict(c, euler_step_max=None) for c in CELLS]):
        title, points = crosses(stable)
        assert points == [] and "unstable" not in title


def test_the_diagonal_marks_its_unstable_points_too():
    from bokeh.models import GlyphRenderer, Scatter

    checked = [dict(c, euler_step_max=20.0 if c["ei_factor"] == c["ie_factor"] == 2.0 else 0.3) for c in CELLS]
    for build in (plots.coupling_diagonal_rates, plots.coupling_diagonal_accuracy):
        figure = hv.render(build(checked, [0.0, 1.0, 2.0]))
        crosses = [r for r in figure.renderers if isinstance(r, GlyphRenderer) and isinstance(r.glyph, Scatter)
                   and r.glyph.marker == "x"]
        assert [list(r.data_source.data["multiplier"]) for r in crosses] == [[2.0]], build.__name__
        assert figure.title.text.endswith("×: forward Euler unstable")
        plain = hv.render(build(CELLS, [0.0, 1.0, 2.0]))
        assert "unstable" not in plain.title.text


def test_the_trained_points_star_lies_under_its_cells_label():
    """The star hid part of the trained cell's numbers on the page (the export drew it under them)."""
    from bokeh.models import Scatter, Text

    figure = hv.render(plots.coupling_heatmap(CELLS, [0.0, 1.0, 2.0], "rate_total_hz"))
    glyphs = [r.glyph for r in figure.renderers]
    star = next(i for i, g in enumerate(glyphs) if isinstance(g, Scatter) and g.marker == "star")
    assert star < next(i for i, g in enumerate(glyphs) if isinstance(g, Text))  # drawn first: below


def test_the_heatmap_export_draws_the_pages_markers():
    """The PNG/SVG export drew the grid and its labels only: no star, no crosses."""
    checked = [dict(c, euler_step_max=20.0 if c["ei_factor"] == c["ie_factor"] == 2.0 else 0.3) for c in CELLS]
    svg = plots._image(lambda: plots.coupling_heatmap(checked, [0.0, 1.0, 2.0], "rate_total_hz"), "svg").getvalue()
    assert plots.UNSTABLE_COLOR.encode() in svg and b"#f6e05e" in svg  # the crosses' and the star's colours
    stable = plots._image(lambda: plots.coupling_heatmap(CELLS, [0.0, 1.0, 2.0], "rate_total_hz"), "svg").getvalue()
    assert plots.UNSTABLE_COLOR.encode() not in stable and b"#f6e05e" in stable


def test_w_in_end_values_are_split_into_init_synapses_and_entries_grown_from_zero():
    """W_in is 95 % zeros at init and learns everywhere: pooled, the entries that grew from 0
    drew a tall first bin that read as a plotting error (seed PING 42 at epoch 100)."""
    init = np.array([[0.0, 0.03, 0.0], [0.0, 0.0, 0.02]])
    end = np.array([[0.001, 0.05, 0.0], [0.0, 0.002, 0.04]])
    series = plots.weight_series("W_in", {"W_in": init}, {"W_in": end})
    assert {k: v.tolist() for k, v in series.items()} == {
        "init": [0.03, 0.02], "end": [0.05, 0.04], "grown from 0": [0.001, 0.002]}
    # W_out is dense: all of it; without an init file (or of another shape), W_in's nonzero entries
    assert plots.weight_series("W_out", {"W_out": init}, None)["init"].size == 6
    assert plots.weight_series("W_in", None, {"W_in": end})["end"].tolist() == [0.001, 0.05, 0.002, 0.04]
    assert set(plots.weight_series("W_in", {"W_in": init[:1]}, {"W_in": end})) == {"init", "end"}
    assert plots.weight_series("W_in", None, None) == {}


def test_an_exported_overlay_keeps_its_legend_beside_the_plot():
    """matplotlib's own choice ("best") put the W_in histogram's legend over its init peak."""
    figure = plots.histograms({"init": np.array([0.03, 0.031]), "end": np.array([0.01, 0.05])}, ["init", "end"],
                              title="W_in", xlabel="weight", logy=True)
    exported = plots.for_matplotlib(figure)
    assert hv.Store.lookup_options("matplotlib", exported, "plot").kwargs["legend_position"] == "right"


def test_exported_grouped_bars_keep_each_runs_colour_and_name_the_runs_in_a_legend():
    """The spike budget's PNG took matplotlib's palette (not the runs' colours) and wrote each
    bar's name under it, over its neighbours' and the group's."""
    from matplotlib.colors import to_hex

    frame = pd.DataFrame({"measure": ["E", "E", "I", "I"], "run": ["PING c82f", "COBA 3164"] * 2,
                          "rate (Hz)": [9.0, 75.0, 40.0, 0.5]})
    colors = {"PING c82f": "#2b6cb0", "COBA 3164": "#dd6b20"}
    bars = hv.Bars(frame, ["measure", "run"], "rate (Hz)").opts(multi_level=True, xrotation=30, cmap=colors,
                                                                 color="run", show_legend=False)
    plot = hv.renderer("matplotlib").get_plot(plots.for_matplotlib(bars))
    axis = plot.handles["axis"]
    drawn = {round(p.get_height(), 1): to_hex(p.get_facecolor()) for p in axis.patches if p.get_height() > 0}
    assert drawn == {9.0: "#2b6cb0", 75.0: "#dd6b20", 40.0: "#2b6cb0", 0.5: "#dd6b20"}
    assert sorted(t.get_text() for t in axis.get_legend().get_texts()) == ["COBA 3164", "PING c82f"]
    lefts = min(p.get_x() for p in axis.patches)
    rights = max(p.get_x() + p.get_width() for p in axis.patches)
    assert axis.get_xlim()[0] < lefts and axis.get_xlim()[1] > rights  # no bar cut at the edges


def test_exported_overlaid_histograms_stay_see_through():
    """fill_alpha (a number) was not carried to matplotlib: the runs' bars hid each other."""
    figure = plots.histograms({"a": np.array([1.0, 2.0]), "b": np.array([1.5, 2.5])}, ["a", "b"], title="t",
                              xlabel="x")
    plot = hv.renderer("matplotlib").get_plot(plots.for_matplotlib(figure))
    alphas = {round(p.get_alpha() or 1.0, 2) for p in plot.handles["axis"].patches if p.get_height() > 0}
    assert alphas == {0.45}


def test_epoch_axes_tick_whole_epochs_only():
    """A three-epoch run's axis read 1, 1.5, 2, 2.5, 3."""
    frame = pd.DataFrame({"epoch": [1, 2, 3], "test_acc": [60.0, 70.0, 75.0]})
    figure = hv.render(plots.trajectories(frame, {"test_acc": "test"}, title="Accuracy", ylabel="acc"))
    assert figure.xaxis[0].ticker.min_interval == 1
    frame["rate_e_hz"] = [12.5, 12.6, 12.4]
    colorbars = [r for r in hv.render(plots.accuracy_vs_rate(frame)).right if type(r).__name__ == "ColorBar"]
    assert [c.ticker.min_interval for c in colorbars] == [1]  # the epoch colour bar too


def test_the_accuracy_vs_rate_exports_with_its_hollow_first_epoch_circle():
    """marker="circle" reached matplotlib as is and the export raised; with fill_alpha 0 carried
    as alpha, the hollow circle would vanish with its outline."""
    frame = pd.DataFrame({"epoch": [1, 2, 3], "test_acc": [60.0, 70.0, 75.0], "rate_e_hz": [12.5, 12.6, 12.4]})
    figure = plots.accuracy_vs_rate(frame)
    assert plots._image(lambda: figure, "png").getvalue()[:4] == b"\x89PNG"
    first = next(e for e in plots.for_matplotlib(figure) if isinstance(e, hv.Scatter) and len(e) == 1
                 and hv.Store.lookup_options("matplotlib", e, "style").kwargs.get("marker") == "o")
    style = hv.Store.lookup_options("matplotlib", first, "style").kwargs
    assert style["facecolors"] == "none" and style.get("alpha", 1) == 1 and style["edgecolor"] == "black"
    # the page's axis labels and the points' epoch colours (they exported as test_acc, one blue)
    exported = plots.for_matplotlib(figure)
    assert hv.Store.lookup_options("matplotlib", exported, "plot").kwargs["xlabel"] == "E rate (Hz)"
    points = next(e for e in exported if isinstance(e, hv.Scatter) and len(e) == 3)
    assert hv.Store.lookup_options("matplotlib", points, "style").kwargs["color"] == "epoch"


def test_grouped_bars_coloured_by_something_else_keep_a_colour_per_group():
    """The study's budget colours by arch, a value column: a grid of PING points would all be
    PING's colour in one legend; such bars keep their per-group palette in the export."""
    frame = pd.DataFrame({"measure": ["E", "E"], "group": ["ei=0.5", "ei=1"], "rate (Hz)": [9.0, 7.0],
                          "arch": ["PING", "PING"]})
    bars = hv.Bars(frame, ["measure", "group"], ["rate (Hz)", "arch"]).opts(
        multi_level=True, color="arch", cmap={"PING": "#1a202c"}, show_legend=False)
    exported = hv.Store.lookup_options("matplotlib", plots.for_matplotlib(bars), "plot").kwargs
    assert exported.get("multi_level", True) is not False and not exported.get("show_legend")


def test_exported_epoch_axes_tick_whole_epochs_only():
    """The page's axes were whole since session 8; the PNG of a 3-epoch run still read 1.5, 2.5."""
    frame = pd.DataFrame({"epoch": [1, 2, 3], "test_acc": [60.0, 70.0, 75.0], "rate_e_hz": [12.5, 12.6, 12.4]})
    plot = hv.renderer("matplotlib").get_plot(
        plots.for_matplotlib(plots.trajectories(frame, {"test_acc": "test"}, title="Accuracy", ylabel="acc")))
    ticks = plot.handles["axis"].get_xticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)
    plot = hv.renderer("matplotlib").get_plot(plots.for_matplotlib(plots.accuracy_vs_rate(frame)))
    (colorbar,) = [p.handles["cbar"] for p in plot.subplots.values() if "cbar" in p.handles]
    ticks = colorbar.get_ticks()
    assert len(ticks) >= 2 and all(float(t).is_integer() for t in ticks)  # the epoch colour bar too


def test_the_seeds_of_one_arch_are_told_apart_by_marker_and_dash_on_the_page_and_in_the_export():
    """nb024 colours runs by arch (PING black, COBA red): ping-seed43 and ping-seed44 drew the same
    black line with the same dots, on the page and in its PNG."""
    from app.dashboard import study_plots

    labels = ["ping-seed42", "ping-seed43", "coba-seed42", "coba-seed43"]
    archs = ["ping", "ping", "coba", "coba"]
    markers, dashes = study_plots.run_marks(labels, archs)
    colors = study_plots.run_colors(labels, archs)
    styles = list(zip(colors, markers, dashes))
    assert colors[0] == colors[1] and len(set(styles)) == 4, styles
    assert study_plots.run_marks(["a", "b"], ["ping", "ping"]) == (["circle"] * 2, ["solid"] * 2)  # a colour each
    frame = pd.DataFrame({"epoch": [1.0, 2.0], **{label: [1.0, 2.0] for label in labels}})
    figure = plots.trajectories(frame, {label: label for label in labels}, title="t", ylabel="y", colors=colors,
                                markers=markers, dashes=dashes)
    rendered = hv.render(figure)
    drawn = {(r.glyph.line_color, str(r.glyph.line_dash)) for r in rendered.renderers if hasattr(r.glyph, "line_dash")
             and type(r.glyph).__name__ == "Line"}
    assert len(drawn) == 4, drawn
    shapes = {r.glyph.marker for r in rendered.renderers if type(r.glyph).__name__ == "Scatter"}
    assert shapes == {"circle", "square"}, shapes
    exported = plots.for_matplotlib(figure)
    lines = {(hv.Store.lookup_options("matplotlib", e, "style").kwargs.get("color"),
              hv.Store.lookup_options("matplotlib", e, "style").kwargs.get("linestyle"))
             for e in exported if isinstance(e, hv.Curve)}
    assert len(lines) == 4, lines
    paths = study_plots.accuracy_vs_rate_runs({label: [{"rate_e_hz": 1.0, "test_acc": 50.0}] for label in labels},
                                              colors, dashes)
    assert {hv.Store.lookup_options("bokeh", e, "style").kwargs["line_dash"]
            for e in paths if isinstance(e, hv.Curve)} == {"solid", "dashed"}


def test_a_dt_audit_of_eight_runs_exports():
    """nb044 trains 2 archs x 4 dt: its figures take six markers, and "diamond" (the 4th)
    made matplotlib raise, so the PNG and SVG buttons failed."""
    from app.dashboard import study_plots

    labels = [f"{arch}-dt{dt}" for arch in ("ping", "coba") for dt in (0.05, 0.1, 0.25, 0.5)]
    rows = [{"label": label, "dt_ms": dt, "rate_e_hz": 5.0 + i} for i, label in enumerate(labels)
            for dt in (0.05, 0.1, 0.25)]
    colors = study_plots.run_colors(labels, [label.split("-")[0] for label in labels])
    svg = plots._image(lambda: study_plots.dt_audit({"rows": rows}, labels, colors, "rate_e_hz", "E rate (Hz)",
                                                    "E rate"), "svg").getvalue()
    assert b"nothing to draw" not in svg and b"ping-dt0.25" in svg


def test_an_nb024_budget_exports_in_the_pages_arch_colours():
    """Its groups are the archs and its bars take the arch's colour (PING black, COBA red) on
    the page; the PNG had matplotlib's own blue and orange, "PINGCOBA" run together under them."""
    from matplotlib.colors import to_hex

    from app.dashboard import study_plots

    rows = [{"group": arch, "arch": arch, "rate_e_hz": e, "rate_i_hz": i, "rate_e_plus_i_hz": e + i,
             "per_cell_total_hz": (4 * e + i) / 5} for arch, e, i in (("ping", 8.8, 39.5), ("coba", 75.3, 0.0))]
    plot = hv.renderer("matplotlib").get_plot(plots.for_matplotlib(study_plots.spike_budget(rows)))
    colours = {to_hex(bar.get_facecolor()) for bar in plot.handles["axis"].patches if bar.get_height() > 0}
    assert colours == set(study_plots.ARCH_COLORS.values()), colours
    legend = plot.handles["axis"].get_legend()
    assert legend is not None and {t.get_text() for t in legend.get_texts()} == {"PING", "COBA"}
