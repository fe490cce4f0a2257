"""The Studies page of a study in progress, in Python on a real SQLite store: its
histograms show each run's latest epoch (they stood empty until a run's 100th)."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import torch

from app.dashboard.studies_page import StudyPage
from engine.rundir import RunDir
from tests.app.test_compare_page import _record, _Services, jobs  # noqa: F401  (jobs: the store fixture)


def _element(figure):
    """The element a page figure (plots.figure_panel over a DynamicMap) draws now."""
    return figure[0].object[()]


def test_a_study_in_progress_shows_each_runs_latest_rates_and_weights(jobs):  # noqa: F811
    study = jobs.submit_study("nb024", {"tier": "smoke", "epochs": 100, "seed": [42], "n_e": 8, "n_i": 2})
    members = {m.label: m.run_id for m in study.members if m.role == "train"}
    ping = members["ping-seed42"]
    jobs.store.claim(ping)
    for epoch in (1, 2, 3):
        jobs.store.record_epoch(ping, epoch, _record(epoch))
    run = RunDir(jobs.data.run_dir(ping))
    run.artifacts.mkdir(parents=True)
    run.checkpoint_path.parent.mkdir(parents=True)
    np.savez(run.artifacts / "rates.npz", rate_e_hz=np.full(8, 7.0), rate_i_hz=np.full(2, 30.0), epoch=np.array(3))
    np.savez(run.artifacts / "weights_init.npz", W_in=np.ones((4, 8)), W_out=np.zeros((8, 2)))
    run.save_checkpoint({"weights": {"W_in": torch.full((4, 8), 2.0), "W_out": torch.full((8, 2), 0.5)}, "epoch": 3})

    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    rates_ping, rates_coba, w_in, w_out = (_element(f) for f in page._histogram_figures())
    assert rates_ping.opts.get().kwargs["title"] == "Per-cell E rates, PING (test set; ping-seed42 at epoch 3)"
    bars = {e.label: e for e in rates_ping if isinstance(e, hv.Histogram)}
    assert sum(bars["ping-seed42"].dimension_values("count")) == 8
    assert [t.text for t in rates_coba if isinstance(t, hv.Text)] == ["written after its first epoch"]
    assert w_out.opts.get().kwargs["title"].startswith("W_out values, init vs end (first run of each arch; PING at "
                                                       "epoch 3)")
    curves = {e.label: e for e in w_out if isinstance(e, hv.Curve)}
    assert np.nansum(curves["PING end"].dimension_values("count")) == 16  # the checkpoint's W_out
    assert np.nansum(curves["init"].dimension_values("count")) == 16
    # a newer epoch is read when its file changes; the page keeps one version of each file
    np.savez(run.artifacts / "rates.npz", rate_e_hz=np.full(8, 9.0), rate_i_hz=np.full(2, 30.0), epoch=np.array(4))
    assert page._npz("ping-seed42", "rates")[1] == 4
    assert page._npz("ping-seed42", "rates")[0] is page._npz("ping-seed42", "rates")[0]  # read once
