"""Reordering the queue from the Runs page, in a real Chromium: tick a queued run,
press "Start next", and the store serves it before the runs queued earlier."""

from __future__ import annotations

import httpx
import pytest

from jobs.models import RunState
from tests.app.conftest import start_server
from tests.app.test_lifecycle import _wait_for
from tests.app.test_dashboard import CHROMIUM, Console, browser  # noqa: F401 (fixture)
from tests.conftest import small_config

playwright_api = pytest.importorskip("playwright.sync_api")
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")


def tick(row, tries: int = 3) -> None:
    """Tick a row's box. The table is live: a row the feed patches right then is drawn anew,
    and the click can land on the old one ("did not change its state", seen once under load)."""
    box = row.locator("input[type=checkbox]")
    for attempt in range(tries):
        try:
            box.check(timeout=10_000)
            return
        except playwright_api.Error:
            if attempt == tries - 1:
                raise


@pytest.fixture(scope="module")
def queue_only_server(tmp_path_factory):
    # no worker slots: the runs stay queued, in the order the page sets
    server = start_server(tmp_path_factory.mktemp("queue") / "data", workers=0, dashboard=True)
    yield server
    server.stop()


def test_start_next_moves_the_ticked_run_to_the_front(queue_only_server, browser):  # noqa: F811
    with queue_only_server.client() as client:
        ids = [client.submit_run(small_config(seed=seed)).id for seed in (1, 2, 3)]
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    context.set_default_navigation_timeout(120_000)
    page = context.new_page()
    page.console = Console(page)
    page.goto(queue_only_server.url + "/")
    row = page.locator(".tabulator-row", has_text=ids[2])
    row.wait_for(timeout=60_000)
    tick(row)
    page.get_by_role("button", name="Start next").click()
    page.get_by_text("Start next: 1 run(s).").wait_for(timeout=30_000)
    with queue_only_server.client() as client:
        priorities = [client.get_run(run_id).priority for run_id in ids]
        assert priorities[2] > priorities[0] == priorities[1] == 0
        client.cancel(ids[0])
    # a run that is no longer queued cannot move: the page says why, the others still move
    page.reload()
    for run_id in ids[:2]:
        page.locator(".tabulator-row", has_text=run_id).wait_for(timeout=60_000)
        tick(page.locator(".tabulator-row", has_text=run_id))
    page.get_by_role("button", name="Start next").click()
    page.get_by_text("only a queued run can move to the front").wait_for(timeout=30_000)
    with queue_only_server.client() as client:
        assert client.get_run(ids[1]).priority > priorities[2]
    context.close()
    assert page.console.errors == [], page.console.errors


def test_pause_queue_shows_the_banner_and_a_resume_elsewhere_clears_it(queue_only_server, browser):  # noqa: F811
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    context.set_default_navigation_timeout(120_000)
    page = context.new_page()
    page.console = Console(page)
    page.goto(queue_only_server.url + "/")
    try:
        page.get_by_role("button", name="Pause queue").click()
        banner = page.get_by_text("Queue paused since")
        banner.wait_for(timeout=30_000)
        page.get_by_role("button", name="Resume queue").wait_for(timeout=30_000)
        assert httpx.get(queue_only_server.url + "/api/queue").json()["paused"] is True
        with queue_only_server.client() as client:
            run_id = client.submit_run(small_config(seed=9)).id
        # the queued run's own page says why it waits
        run_page = context.new_page()
        run_page.goto(f"{queue_only_server.url}/run?id={run_id}")
        run_page.get_by_text("the queue is paused").wait_for(timeout=60_000)
        httpx.post(queue_only_server.url + "/api/queue/resume")  # another client resumes: both pages follow
        banner.wait_for(state="hidden", timeout=30_000)
        page.get_by_role("button", name="Pause queue").wait_for(timeout=30_000)
        run_page.get_by_text("the queue is paused").wait_for(state="hidden", timeout=30_000)
    finally:
        httpx.post(queue_only_server.url + "/api/queue/resume")
    context.close()
    assert page.console.errors == [], page.console.errors


def test_back_to_queue_sends_a_running_run_back_and_refuses_a_queued_one(tmp_path, browser):  # noqa: F811
    server = start_server(tmp_path / "data", workers=1, dashboard=True)
    try:
        with server.client() as client:
            running = client.submit_run(small_config(epochs=50)).id
            _wait_for(lambda: client.get_run(running).n_epochs >= 1, 120)
            waiting = client.submit_run(small_config(epochs=1, seed=3)).id
        context = browser.new_context(viewport={"width": 1500, "height": 1000})
        context.set_default_navigation_timeout(120_000)
        page = context.new_page()
        page.console = Console(page)
        page.goto(server.url + "/")
        for run_id in (running, waiting):
            row = page.locator(".tabulator-row", has_text=run_id)
            row.wait_for(timeout=60_000)
            tick(row)
        page.get_by_role("button", name="Back to queue").click()
        # the queued one is refused with the reason, the running one goes back
        page.get_by_text("only a running run can go back to the queue").wait_for(timeout=30_000)
        page.get_by_text("Send back to the queue: 1 run(s).").wait_for(timeout=5_000)
        with server.client() as client:
            done = client.wait(waiting, timeout_s=120)  # it took the slot the long run gave away
            # then the long run got the slot back, resuming from its checkpoint
            again = _wait_for(lambda: (lambda r: r if r.attempt == 2 and r.resumed_from_epoch else None)(
                client.get_run(running)), 60)
            client.cancel(running)
        assert done.state == RunState.SUCCEEDED and done.started_at > again.started_at
        assert again.restarts == 1 and not again.requeue_requested
        context.close()
        assert page.console.errors == [], page.console.errors
    finally:
        server.stop()



def test_the_runs_page_fits_a_1400_px_window(queue_only_server, browser):  # noqa: F811
    """With "Back to queue" the sixth action pushed the page wider than its window."""
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    context.set_default_navigation_timeout(120_000)
    page = context.new_page()
    page.goto(queue_only_server.url + "/")
    page.get_by_role("button", name="Back to queue").wait_for(timeout=60_000)
    overflow = page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    context.close()
    assert overflow <= 0, f"the page is {overflow} px wider than the window"
