"""The Compare page's tables and labels in Python, on a real SQLite store (the
browser test in test_dashboard.py clicks its way there): runs of both recipes
side by side say which recipe each is, and runs still training say why their
per-cell histograms are empty."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import panel as pn
import pytest

import engine
from app.dashboard.compare_page import ARCH_COLORS, ComparePage
from jobs.models import RunKind, RunState
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore

from tests.conftest import small_config


def _record(epoch: int) -> dict:
    return {"epoch": epoch, "test_acc": 60.0 + epoch, "train_acc": 50.0 + epoch, "train_loss": 1.0, "test_loss": 1.0,
            "rate_e_hz": 5.0, "rate_i_hz": 9.0 + epoch, "active_frac_e": 1.0, "active_frac_i": 1.0,
            "w_norm": {"W_in": 6.0, "W_out": 3.0}, "grad_ratio": {"W_in": 0.1, "W_out": 0.01}, "divergence": None}


@pytest.fixture
def jobs(tmp_path):
    data = DataDir.at(tmp_path / "data")
    store = RunStore(data.db_path)
    yield JobService(store, data)
    store.close()


def _run(jobs, epochs: int, **fields):
    config = engine.Config.from_dict(small_config(**fields)).to_dict()
    run = jobs.store.create_run(RunKind.TRAIN, config)
    for epoch in range(1, epochs + 1):
        jobs.store.record_epoch(run.id, epoch, _record(epoch))
    return jobs.store.get_run(run.id)


class _Services:
    def __init__(self, jobs):
        self.jobs = jobs


def test_runs_of_both_recipes_are_told_apart_and_unfinished_ones_say_why(jobs):
    canonical, seed = _run(jobs, 3, seed=42), _run(jobs, 2, seed=42, recipe="seed")
    page = ComparePage(_Services(jobs), feed=None, runs=[canonical, seed])
    table = page._seed_frame()
    assert list(table["recipe"]) == ["canonical", "seed"] and list(table["epochs"]) == [3, 2]
    labels = [page._label(r) for r in (canonical, seed)]
    assert labels[0].startswith("PING seed 42 · canonical recipe") and "seed recipe" in labels[1]
    assert len(set(page._budget_frame()["run"])) == 2  # the budget's bars are two runs, not one name
    histogram = page.cell_rates("E")  # neither run has ended an epoch in a run folder: no rates.npz yet
    assert [e.label for e in histogram if isinstance(e, hv.Histogram)] == labels  # labels stay put
    assert [e.text for e in histogram if isinstance(e, hv.Text)] == ["none before its first epoch ends"]


def test_a_run_still_training_shows_its_latest_per_cell_rates(jobs):
    """The per-cell histograms stood empty for the whole of a 100-epoch run (rates.npz was
    written when it finished); training writes it after every epoch, with the epoch."""
    training, finished = _run(jobs, 2, seed=42), _run(jobs, 3, seed=43)
    for run, epoch in ((training, 2), (finished, 3)):
        folder = jobs.data.run_dir(run.id) / "artifacts"
        folder.mkdir(parents=True)
        np.savez(folder / "rates.npz", rate_e_hz=np.full(8, 5.0 + epoch), rate_i_hz=np.ones(2), epoch=np.array(epoch))
    jobs.store.claim(finished.id)
    jobs.store.transition(finished.id, RunState.SUCCEEDED)
    page = ComparePage(_Services(jobs), feed=None, runs=[jobs.get_run(training.id), jobs.get_run(finished.id)])
    figure = page.cell_rates("E")
    bars = {e.label: e for e in figure if isinstance(e, hv.Histogram)}
    assert set(bars) == {page._label(training), page._label(finished)}  # labels stay put from epoch to epoch
    assert figure.opts.get().kwargs["title"] == f"Per-cell E rates (last epoch; {training.id[:6]} at epoch 2)"
    assert all(sum(h.dimension_values("count")) == 8 for h in bars.values())


def test_runs_of_one_recipe_keep_short_labels(jobs):
    ping, coba = _run(jobs, 1), _run(jobs, 1, arch="coba")
    page = ComparePage(_Services(jobs), feed=None, runs=[ping, coba])
    assert "recipe" not in page._label(ping) and list(page._seed_frame()["recipe"]) == ["canonical"] * 2


def test_the_seed_table_says_why_a_short_run_has_no_convergence_flag(jobs):
    """The flags need the slopes' 10 epochs: a 3-epoch run's cells stood blank."""
    short, long_, fresh = _run(jobs, 3), _run(jobs, 12, seed=43), _run(jobs, 0, seed=44)
    table = ComparePage(_Services(jobs), feed=None, runs=[short, long_, fresh])._seed_frame()
    assert list(table["converged_acc"]) == ["n/a (3 of 10 ep)", "still moving", ""]
    assert list(table["converged_rate_e"]) == ["n/a (3 of 10 ep)", "converged", ""]


def test_the_title_counts_one_run_as_one_run(jobs):
    """/compare?runs=ID of one run was titled "Compare 1 runs"."""
    page = ComparePage(_Services(jobs), feed=None, runs=[_run(jobs, 1)]).view()
    assert "<h1>Compare 1 run</h1>" in page[1].object


def test_ids_left_out_are_named_with_the_reason(jobs):
    """/compare?runs=<unknown> showed the page without saying which ids it had dropped."""
    from app.dashboard.compare_page import pick_runs

    trained = _run(jobs, 2)
    analysis = jobs.store.create_run(RunKind.ANALYSIS, {"name": "coupling_sweep"}, source_run_id=trained.id)
    runs, skipped = pick_runs(_Services(jobs), [trained.id, "feedbeef0000", analysis.id])
    assert [r.id for r in runs] == [trained.id]
    assert skipped == ["feedbeef0000 (no such run)", f"{analysis.id} (an analysis, not a training run)"]
    page = ComparePage(_Services(jobs), feed=None, runs=runs, skipped=skipped).view()
    texts = [pane.object for pane in page.select(pn.pane.HTML)]
    assert any("Left out: feedbeef0000 (no such run), " in text for text in texts)
    clean = ComparePage(_Services(jobs), feed=None, runs=runs).view()
    assert not any("Left out" in pane.object for pane in clean.select(pn.pane.HTML))


def test_a_run_has_one_colour_in_every_figure(jobs):
    """The trajectories coloured by arch (both PING runs blue) while the histograms and bars
    gave the same runs the palette's blue, red and green: PING seed 42 was blue in one figure
    and green in the next. Now each run has its arch's colour, a shade of it per further run."""
    ping, coba, canonical = _run(jobs, 2, seed=42, recipe="seed"), _run(jobs, 2, seed=42, arch="coba",
                                                                          recipe="seed"), _run(jobs, 2, seed=42)
    for run in (ping, coba, canonical):
        folder = jobs.data.run_dir(run.id) / "artifacts"
        folder.mkdir(parents=True)
        np.savez(folder / "rates.npz", rate_e_hz=np.arange(8.0), rate_i_hz=np.ones(2), epoch=np.array(2))
    page = ComparePage(_Services(jobs), feed=None, runs=[ping, coba, canonical])
    lines = {c.label: hv.Store.lookup_options("bokeh", c, "style").kwargs["color"] for c in page.accuracy()}
    bars = {e.label: hv.Store.lookup_options("bokeh", e, "style").kwargs["fill_color"]
            for e in page.cell_rates("E") if isinstance(e, hv.Histogram)}
    budget = page._run_colors()
    for index, run in enumerate((ping, coba, canonical)):
        label = page._label(run)
        assert lines[label] == bars[label] == budget[page._bar_name(run)]
    assert len(set(lines.values())) == 3  # the two PING runs: two shades of one blue
    assert lines[page._label(ping)] == ARCH_COLORS["ping"] and lines[page._label(coba)] == ARCH_COLORS["coba"]


def test_the_trajectory_legends_stand_under_the_curves(jobs):
    """Inside the plot the runs' long labels covered the curves of a 100-epoch comparison."""
    from bokeh.models import Legend

    runs = [_run(jobs, 2, seed=42, recipe="seed"), _run(jobs, 2, seed=42, arch="coba", recipe="seed"), _run(jobs, 2)]
    figure = hv.render(ComparePage(_Services(jobs), feed=None, runs=runs).accuracy())
    assert [type(x) for x in figure.below if isinstance(x, Legend)] == [Legend]
    assert not [x for x in figure.center if isinstance(x, Legend)]
    assert len(figure.below[-1].items) == 3 and figure.height > 3 * 23  # taller by the legend's lines
    assert figure.xaxis[0].ticker.min_interval == 1  # whole epochs (two: it read 1, 1.2, ..., 2)
    # and the per-cell histograms': PING's I bars (30-40 Hz) stood under the legend, at the right end
    for run in runs:
        folder = jobs.data.run_dir(run.id) / "artifacts"
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / "rates.npz", rate_e_hz=np.full(8, 7.0), rate_i_hz=np.full(2, 35.0))
    histogram = hv.render(ComparePage(_Services(jobs), feed=None, runs=runs).cell_rates("I"))
    assert [type(x) for x in histogram.below if isinstance(x, Legend)] == [Legend]
    assert not [x for x in histogram.center if isinstance(x, Legend)]


def test_the_spike_budget_bars_stand_in_the_tables_order(jobs):
    """Five runs of nb024 drew their budget bars in reverse order of the table and legends
    (HoloViews keeps first-seen order of categorical keys only for some names); the rotated
    names also ran into each other."""
    runs = [_run(jobs, 1, arch="coba", seed=44), _run(jobs, 1, seed=43), _run(jobs, 1, arch="coba", seed=42),
            _run(jobs, 1, seed=42, recipe="seed"), _run(jobs, 1, arch="coba", seed=43)]
    page = ComparePage(_Services(jobs), feed=None, runs=runs)
    factors = hv.render(page.budget()).x_range.factors
    names = [page._bar_name(run) for run in runs]
    for measure in ("E", "I", "E + I", "per-cell total"):
        assert [str(name) for group, name in factors if group == measure] == names
    assert hv.Store.lookup_options("bokeh", page.budget(), "plot").kwargs["xrotation"] == 45
