"""The Studies page of a study in progress, in Python on a real SQLite store: its
histograms show each run's latest epoch (they stood empty until a run's 100th)."""

from __future__ import annotations

import holoviews as hv
import numpy as np
import torch

from app.dashboard.studies_page import StudyPage
from engine.rundir import RunDir
from tests.app.test_compare_page import _record, _Services, jobs  # noqa: F401  (jobs: the store fixture)
from tests.app.test_run_files import _bump


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
    sparse = np.zeros((4, 8))
    sparse[0] = 1.0  # 8 synapses at init, 24 entries at 0
    np.savez(run.artifacts / "weights_init.npz", W_in=sparse, W_out=np.zeros((8, 2)))
    grown = torch.full((4, 8), 2.0)
    grown[3] = 0.0  # 16 of the 24 grew from 0
    run.save_checkpoint({"weights": {"W_in": grown, "W_out": torch.full((8, 2), 0.5)}, "epoch": 3})

    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    rates_ping, rates_coba, w_in, w_in_coba, w_out, w_out_coba = (_element(f) for f in page._histogram_figures())
    assert rates_ping.opts.get().kwargs["title"] == "Per-cell E rates, PING (test set)\nping-seed42 at epoch 3"
    bars = {e.label: e for e in rates_ping if isinstance(e, hv.Histogram)}
    assert sum(bars["ping-seed42"].dimension_values("count")) == 8
    assert [t.text for t in rates_coba if isinstance(t, hv.Text)] == ["written after its first epoch"]
    # one figure per arch and weight: PING's and COBA's inits differ under the seed recipe
    assert w_out.opts.get().kwargs["title"] == "W_out values, init vs end, PING (ping-seed42 at epoch 3)"
    assert w_out_coba.opts.get().kwargs["title"] == "W_out values, init vs end, COBA (coba-seed42)"
    curves = {e.label: e for e in w_out if isinstance(e, hv.Curve)}
    assert np.nansum(curves["end"].dimension_values("count")) == 16  # the checkpoint's W_out
    assert np.nansum(curves["init"].dimension_values("count")) == 16
    assert [t.text for t in w_out_coba if isinstance(t, hv.Text)] == ["written after its first epoch"]
    # W_in: the init synapses at init and at the end, and the entries that grew from 0
    curves = {e.label: np.nansum(e.dimension_values("count")) for e in w_in if isinstance(e, hv.Curve)}
    assert curves == {"init": 8, "end": 8, "grown from 0": 16}
    # a newer epoch is read when its file changes; the page keeps one version of each file
    np.savez(run.artifacts / "rates.npz", rate_e_hz=np.full(8, 9.0), rate_i_hz=np.full(2, 30.0), epoch=np.array(4))
    _bump(run.artifacts / "rates.npz", 1)
    assert page._npz("ping-seed42", "rates")[1] == 4
    assert page._npz("ping-seed42", "rates")[0] is page._npz("ping-seed42", "rates")[0]  # read once
    # a restart requeues a run mid-study (or the queue is paused): its figures keep its latest epoch
    attempt = jobs.get_run(ping).attempt
    assert jobs.store.requeue(ping, attempt, restart=True)
    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    rates_ping, _, w_in, *_ = (_element(f) for f in page._histogram_figures())
    assert rates_ping.opts.get().kwargs["title"] == "Per-cell E rates, PING (test set)\nping-seed42 at epoch 4"
    assert w_in.opts.get().kwargs["title"] == "W_in values, init vs end, PING (ping-seed42 at epoch 3)"


def test_a_study_in_progress_says_how_long_its_training_has_left(jobs):  # noqa: F811
    """A 600-epoch study at its own scale said "41 %" for days."""
    import html

    study = jobs.submit_study("nb024", {"tier": "smoke", "epochs": 10, "seed": [42], "n_e": 8, "n_i": 2})
    ping = next(m.run_id for m in study.members if m.label == "ping-seed42")
    jobs.store.claim(ping)
    for epoch in (1, 2):
        jobs.store.record_epoch(ping, epoch, {**_record(epoch), "epoch_s": 60.0})
    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    page._apply(*page._read())
    # PING: 8 epochs to go at 60 s; COBA (same work units, not started): 10 at PING's pace; one slot
    assert "about 18 min left for its training" in html.unescape(page.header.object)


def test_a_study_waits_for_the_other_training_runs_ahead_of_it_in_the_queue(jobs):  # noqa: F811
    """nb024's seed half said hours too few while a canonical run, moved to the front,
    trained ahead of it: the time left counted the study's own runs only."""
    import html

    small = {"tier": "smoke", "epochs": 10, "seed": [42], "n_e": 8, "n_i": 2}
    study = jobs.submit_study("nb024", small)
    ping = next(m.run_id for m in study.members if m.label == "ping-seed42")
    jobs.store.claim(ping)
    for epoch in (1, 2):
        jobs.store.record_epoch(ping, epoch, {**_record(epoch), "epoch_s": 60.0})
    behind = jobs.submit_run({"arch": "coba", "tier": "smoke", "epochs": 10, "n_e": 8, "n_i": 2, "seed": 7})
    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    page._apply(*page._read())
    # one slot: PING's 8 epochs at 60 s, then COBA's 10; a run queued after the study waits behind it
    assert "about 18 min left for its training" in html.unescape(page.header.object)
    jobs.move_to_front(behind.id)  # now it takes the slot PING frees: 10 more epochs at the same pace
    page._apply(*page._read())
    said = html.unescape(page.header.object)
    assert "about 28 min left for its training" in said and "with the server's other training runs" in said


def test_three_seeds_in_training_keep_each_title_line_within_the_plot(jobs):  # noqa: F811
    """"Per-cell E rates, PING (test set; ping-seed43 at epoch 3); ping-seed44: written after
    its first epoch" ran past the plot's width and was cut (Chromium, the study of session 9)."""
    study = jobs.submit_study("nb024", {"tier": "smoke", "epochs": 100, "seed": [42, 43, 44], "n_e": 8, "n_i": 2})
    members = {m.label: m.run_id for m in study.members if m.role == "train"}

    def training(label: str, epoch: int) -> None:
        run = RunDir(jobs.data.run_dir(members[label]))
        run.artifacts.mkdir(parents=True)
        np.savez(run.artifacts / "rates.npz", rate_e_hz=np.full(8, 7.0), rate_i_hz=np.full(2, 30.0),
                 epoch=np.array(epoch))
        jobs.store.claim(members[label])

    training("ping-seed42", 94)
    training("ping-seed43", 50)
    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    title = _element(page._histogram_figures()[0]).opts.get().kwargs["title"]
    assert title.split("\n") == ["Per-cell E rates, PING (test set)", "ping-seed42 at epoch 94, ping-seed43 at epoch 50",
                                  "ping-seed44: written after its first epoch"]
    training("ping-seed44", 12)  # all three training: the epochs wrap onto a second line
    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    title = _element(page._histogram_figures()[0]).opts.get().kwargs["title"]
    assert title.split("\n") == ["Per-cell E rates, PING (test set)", "ping-seed42 at epoch 94, ping-seed43 at epoch 50,",
                                  "ping-seed44 at epoch 12"]
    assert max(len(line) for line in title.split("\n")) <= 60  # about what a half-width plot holds


def test_the_time_left_follows_other_training_runs_too(jobs):  # noqa: F811
    """All of a study's runs can wait while another study's train: their starts and ends move
    its time left, so news of any training run refreshes an unfinished study's page."""
    from app.dashboard.live import News

    study = jobs.submit_study("nb024", {"tier": "smoke", "epochs": 10, "seed": [42], "n_e": 8, "n_i": 2})
    other = jobs.submit_run({"arch": "coba", "tier": "smoke", "epochs": 10, "n_e": 8, "n_i": 2})
    page = StudyPage(_Services(jobs), None, jobs.get_study(study.id))
    assert page._relevant(News(runs={other.id: jobs.get_run(other.id)}, epochs={}))
