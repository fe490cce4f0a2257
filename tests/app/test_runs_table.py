"""The Runs table's rows (app/dashboard/runs_page.run_row) for each kind of run, in Python."""

from __future__ import annotations

import dataclasses
import time

from app.dashboard.runs_page import run_row
from jobs.models import Run, RunKind, RunState


def a_run(kind: RunKind, config: dict, source_run_id: str | None = None, error: str | None = None) -> Run:
    return Run(id="abc123def456", kind=kind, config=config, state=RunState.SUCCEEDED, created_at=time.time(),
               started_at=None, finished_at=None, progress=1.0, error=error, code_version=None, sweep_id=None,
               source_run_id=source_run_id, attempt=1, heartbeat_at=None, worker_pid=None,
               cancel_requested=False, resumed_from_epoch=None, n_epochs=0)


def test_each_kind_of_run_says_what_it_is_in_the_detail_column():
    # a FORCE experiment has neither a name nor a source run: its row read "of None"
    force = run_row(a_run(RunKind.FORCE, {"experiment": "grid", "params": {}}), None)
    assert force["detail"] == "FORCE grid"
    analysis = run_row(a_run(RunKind.ANALYSIS, {"name": "coupling_sweep"}, source_run_id="0123456789ab"), None)
    assert analysis["detail"] == "coupling_sweep of 0123456789ab"
    train = run_row(a_run(RunKind.TRAIN, {"arch": "ping", "seed": 42, "n_e": 40, "n_i": 10, "epochs": 3}), None)
    assert train["detail"] == "" and train["seed"] == "42" and train["size"] == "40/10"
    failed = run_row(a_run(RunKind.FORCE, {"experiment": "train"}, error="ValueError: n must be > 0\n"), None)
    assert failed["detail"] == "ValueError: n must be > 0"


def test_the_created_column_gives_the_year_in_full():
    """"26-12-07" could be read as the 26th; the year comes whole, first."""
    import datetime as dt

    run = a_run(RunKind.TRAIN, {"arch": "ping"})
    expected = dt.datetime.fromtimestamp(run.created_at).strftime("%Y-%m-%d %H:%M")
    assert run_row(run, None)["created"] == expected and len(expected.split("-")[0]) == 4


def test_a_run_that_has_done_nothing_yet_says_it_is_starting():
    """A fresh install's first run sat at 0 % for about a minute (compiling the kernels) with
    nothing said: it read as stuck."""
    import dataclasses

    import pandas as pd

    from app.dashboard.runs_page import STARTING_NOTE, RunsPage

    fresh = dataclasses.replace(a_run(RunKind.TRAIN, {"arch": "ping", "epochs": 3}), state=RunState.RUNNING,
                                progress=0.0)
    row = run_row(fresh, None)
    assert (row["state"], row["detail"]) == ("starting", STARTING_NOTE) and "compiles the kernels" in STARTING_NOTE
    frame = pd.DataFrame([row, run_row(a_run(RunKind.TRAIN, {"arch": "coba"}), None)])
    assert list(RunsPage._filter(frame, "running", "all", "")["id"]) == [fresh.id]  # the filter counts it
    going = dataclasses.replace(fresh, progress=0.01)
    assert (run_row(going, None)["state"], run_row(going, None)["detail"]) == ("running", "")
    resumed = dataclasses.replace(fresh, n_epochs=4)  # a resumed run is past that
    assert run_row(resumed, None)["detail"] == ""
    analysis = dataclasses.replace(a_run(RunKind.ANALYSIS, {"name": "fi_curve"}, source_run_id="0123456789ab"),
                                   state=RunState.RUNNING, progress=0.0)
    assert run_row(analysis, None)["detail"] == f"fi_curve of 0123456789ab · {STARTING_NOTE}"


def test_pause_and_resume_from_the_runs_page_and_the_live_feed_tells_every_page(tmp_path):
    """The button pauses and resumes the store's queue; a pause or resume made elsewhere (the
    API, another tab) reaches the page through the live feed; a queued run's page says why
    it waits."""
    from app.dashboard.live import LiveFeed
    from app.dashboard.run_page import RunPage
    from app.dashboard.runs_page import RunsPage
    from jobs.paths import DataDir
    from jobs.service import JobService
    from jobs.store import RunStore

    data = DataDir.at(tmp_path)
    jobs = JobService(RunStore(data.db_path), data)
    services = type("Services", (), {"jobs": jobs})()
    feed = LiveFeed(jobs)
    page = RunsPage(services, feed)
    assert (page.queue_button.label, page.queue_note.visible) == ("Pause queue", False)
    page.toggle_queue()
    assert jobs.queue_paused_at() is not None
    assert (page.queue_button.label, page.queue_note.visible) == ("Resume queue", True)
    assert "Queue paused" in page.queue_note.object
    news = feed.poll()
    assert news and news.queue_changed and news.queue_paused_at == jobs.queue_paused_at()
    assert not feed.poll()  # told once

    run = jobs.submit_run({"tier": "smoke", "epochs": 1})
    waiting = RunPage(services, feed, run)
    assert "the queue is paused" in waiting.header.object
    jobs.resume_queue()  # elsewhere
    news = feed.poll()
    assert news.queue_changed and news.queue_paused_at is None
    page._on_news(news)
    waiting._on_news(news)
    assert (page.queue_button.label, page.queue_note.visible) == ("Pause queue", False)
    assert "the queue is paused" not in waiting.header.object
    # a click acts on what the button said: paused elsewhere just before a click on
    # "Pause queue" (the page not told yet), the queue stays paused
    jobs.pause_queue()
    page.toggle_queue()
    assert jobs.queue_paused_at() is not None and page.queue_button.label == "Resume queue"


def test_queueing_on_a_server_without_a_queue_endpoint_still_succeeds(capsys):
    """The paused-queue warning is a GET after the run is queued: if it fails (an older
    server), the command must not exit 2, or the user queues the run again."""
    from app.cli_remote import warn_if_paused
    from app.client import ClientError

    class OlderServer:
        def queue(self):
            raise ClientError("404: Not Found")

    warn_if_paused(OlderServer())
    assert capsys.readouterr().err == ""


def test_a_run_sent_back_says_why_it_waits():
    run = dataclasses.replace(a_run(RunKind.TRAIN, {"arch": "ping", "epochs": 10}), n_epochs=4)
    stopping = dataclasses.replace(run, state=RunState.RUNNING, requeued_at=time.time())
    assert run_row(stopping, {"epoch": 4, "epoch_s": 60.0})["detail"] == "going back to the queue at its next batch"
    waiting = dataclasses.replace(stopping, state=RunState.QUEUED)
    assert run_row(waiting, None)["detail"] == "sent back to the queue: resumes from its checkpoint in its turn"


def test_a_running_force_run_says_how_long_it_has_left_on_the_force_page():
    """A FORCE grid runs for hours: its row on the FORCE page gives its time left, from its
    own pace (100 s for the first half: about 2 min to go); a failed run's row gives its error."""
    from app.dashboard import force_page

    config = {"experiment": "grid", "params": {"config": {"task": "sine", "n": 2000}, "q_values": [1.0],
                                               "g_values": [0.1]}}
    now = time.time()
    running = dataclasses.replace(a_run(RunKind.FORCE, config), state=RunState.RUNNING, started_at=now - 100,
                                  progress=0.5)
    assert force_page.run_row(running)["detail"] == "about 2 min left"
    restarted = dataclasses.replace(running, attempt=2)  # its first attempt's time is not kept
    assert force_page.run_row(restarted)["detail"] == ""
    failed = dataclasses.replace(running, state=RunState.FAILED, error="Traceback\nValueError: diverged\n")
    assert force_page.run_row(failed)["detail"] == "ValueError: diverged"
