"""The Run page of a run still training, in Python on a real SQLite store: its summary and
per-cell histograms say which epoch they are from (they said "final" for days)."""

from __future__ import annotations

import dataclasses
import html

import holoviews as hv
import numpy as np
import torch

from app.dashboard.run_page import RunPage
from jobs.models import RunKind, RunState
from tests.app.test_compare_page import _record, _Services, _run, jobs  # noqa: F401  (jobs: the store fixture)


def test_a_run_still_training_says_which_epoch_its_figures_are_from(jobs):  # noqa: F811
    run = _run(jobs, 2, seed=42)
    jobs.store.claim(run.id)
    before = RunPage(_Services(jobs), feed=None, run=jobs.get_run(run.id)).cell_rates_e()  # no rates.npz yet
    assert before.opts.get().kwargs["title"] == "Per-cell E rates (test set)"  # not "final"
    assert [t.text for t in before if isinstance(t, hv.Text)] == ["written after its first epoch"]
    folder = jobs.data.run_dir(run.id) / "artifacts"
    folder.mkdir(parents=True)
    np.savez(folder / "rates.npz", rate_e_hz=np.full(8, 7.0), rate_i_hz=np.full(2, 30.0), epoch=np.array(2))
    page = RunPage(_Services(jobs), feed=None, run=jobs.get_run(run.id))
    assert "epoch 2 test accuracy" in page.summary.object and "final" not in page.summary.object
    histogram = page.cell_rates_e()
    assert histogram.opts.get().kwargs["title"] == "Per-cell E rates (test set, epoch 2)"
    assert sum(next(e for e in histogram if isinstance(e, hv.Histogram)).dimension_values("count")) == 8
    # the weights' "end" is the latest checkpoint's while it trains
    np.savez(folder / "weights_init.npz", W_in=np.ones((4, 3)), W_out=np.ones((3, 2)))
    (folder.parent / "checkpoints").mkdir()
    torch.save({"epoch": 2, "weights": {"W_in": torch.ones(4, 3), "W_out": torch.full((3, 2), 0.5)}},
               folder.parent / "checkpoints" / "last.pt")
    page = RunPage(_Services(jobs), feed=None, run=jobs.get_run(run.id))
    weights = page.w_out_values()
    assert weights.opts.get().kwargs["title"] == "W_out values, init vs epoch 2"
    assert [e.label for e in weights if isinstance(e, hv.Curve)] == ["init", "end"] and page._weights("W_in")[0]["end"].size == 12
    assert [e.label for e in page.w_in_values() if isinstance(e, hv.Curve)] == ["init", "end", "grown from 0"]
    stopped = dataclasses.replace(jobs.get_run(run.id), state=RunState.CANCELLED)
    cancelled = RunPage(_Services(jobs), feed=None, run=stopped)
    assert cancelled.w_out_values().opts.get().kwargs["title"] == "W_out values, init vs epoch 2"  # its last epoch
    jobs.store.transition(run.id, RunState.SUCCEEDED)
    done = RunPage(_Services(jobs), feed=None, run=jobs.get_run(run.id))
    assert "final test accuracy" in done.summary.object
    assert done.cell_rates_i().opts.get().kwargs["title"] == "Per-cell I rates (test set, final)"


def test_a_run_that_has_done_nothing_yet_says_it_is_starting(jobs):  # noqa: F811
    from app.dashboard.runs_page import STARTING_NOTE

    run = _run(jobs, 0, seed=42)
    jobs.store.claim(run.id)
    page = RunPage(_Services(jobs), feed=None, run=jobs.get_run(run.id))
    assert f"0 % · {STARTING_NOTE}" in html.unescape(page.header.object)
    jobs.store.record_epoch(run.id, 1, _record(1))
    page = RunPage(_Services(jobs), feed=None, run=jobs.get_run(run.id))
    assert STARTING_NOTE not in html.unescape(page.header.object)


def test_a_training_runs_page_says_how_long_it_has_left(jobs):  # noqa: F811
    """A 100-epoch study run said "38 / 100" for days and left the user to do the sum."""
    run = jobs.store.create_run(RunKind.TRAIN, {**_run(jobs, 0).config, "epochs": 10})
    jobs.store.claim(run.id)
    for epoch in (1, 2, 3, 4):
        jobs.store.record_epoch(run.id, epoch, {**_record(epoch), "epoch_s": 300.0})
    page = RunPage(_Services(jobs), feed=None, run=jobs.get_run(run.id))
    assert "about 30 min left" in html.unescape(page.header.object)  # 6 epochs of 300 s
