"""The Coupling page in Python on a real SQLite store: which runs it offers, and a sweep
launched on a run still training (a 100-epoch study's runs train for days)."""

from __future__ import annotations

import panel as pn
import torch

from app.dashboard.coupling_page import CouplingPage, picker_html
from engine.rundir import RunDir
from tests.app.test_compare_page import _Services, _run, jobs  # noqa: F401  (jobs: the store fixture)


def test_a_run_still_training_is_offered_and_swept_at_its_latest_checkpoint(jobs):  # noqa: F811
    training = _run(jobs, 2, seed=42, recipe="seed")
    jobs.store.claim(training.id)
    services = _Services(jobs)
    offered = picker_html(services)
    assert f'/coupling?run={training.id}' in offered and f"epoch 2 of {training.config['epochs']}" in offered and "seed recipe" in offered
    folder = RunDir(jobs.data.run_dir(training.id))
    folder.checkpoint_path.parent.mkdir(parents=True)
    folder.save_checkpoint(
        {"weights": {"W_in": torch.ones(2, 2)}, "epoch": 2})
    page = CouplingPage(services, None, jobs.get_run(training.id), None)
    page.samples.value = 4
    page.launch()  # it asked for final weights, which a training run has not: 409 on the page
    assert page.analysis is not None, page.status.object
    assert page.analysis.config["params"]["weights"] == "last"


def test_with_nothing_trained_the_page_says_where_to_begin(jobs):  # noqa: F811
    queued = _run(jobs, 0, seed=42)
    assert "No finished training run yet" in picker_html(_Services(jobs)) and queued.id not in picker_html(
        _Services(jobs))


def test_a_sweeps_id_alone_opens_its_run_and_an_unknown_id_is_named(jobs, monkeypatch):  # noqa: F811
    """/coupling?analysis=ID showed the run picker as if no id had been given; an unknown
    id did too, without a word; and run=A&analysis=<B's sweep> drew B's sweep as A's."""
    from app.dashboard import coupling_page
    from jobs.models import RunKind

    swept, other = _run(jobs, 2, seed=42), _run(jobs, 2, seed=43)
    sweep = jobs.store.create_run(RunKind.ANALYSIS, {"name": "coupling_sweep"}, source_run_id=swept.id)
    other_sweep = jobs.store.create_run(RunKind.ANALYSIS, {"name": "coupling_sweep"}, source_run_id=other.id)
    opened = []
    monkeypatch.setattr(coupling_page, "CouplingPage", lambda services, feed, run, analysis: type(
        "Page", (), {"view": lambda self: opened.append((run.id, analysis.id if analysis else None))})())

    def page(**query):
        monkeypatch.setattr(coupling_page.layout, "query_param", query.get)
        return coupling_page.create(_Services(jobs), None)

    page(analysis=sweep.id)
    page(run=swept.id, analysis=other_sweep.id)
    page(run=other.id)
    assert opened == [(swept.id, sweep.id), (swept.id, sweep.id), (other.id, other_sweep.id)]
    for asked in ("feedbeef0000", sweep.id + "x"):
        texts = [p.object for p in page(run=asked).select(pn.pane.HTML)]
        assert any(f"No training run or coupling sweep <code>{asked}</code>" in t for t in texts)
    assert not any("No training run or" in p.object for p in page().select(pn.pane.HTML))
