"""The FORCE page in a real Chromium against a real server on 127.0.0.1:
launch from the form, traces growing live, a tiny Q x G grid with a clicked
cell, and errors marked on the field they name. Screenshots land in
test-output/screenshots/ (the `page` fixture fails on any console error)."""

from __future__ import annotations

import time

import httpx
import pytest

from app.dashboard.estimate import format_duration
from engine.force.experiments import validate, work

from tests.app.test_dashboard import CHROMIUM, TITLES_JS, browser, field, page, server  # noqa: F401, F811 (fixtures)

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")

# samples of the longest trace any plot holds (one per ms of the run)
TRACE_SAMPLES_JS = """() => Math.max(0, ...Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.data && m.data['time (s)'] && m.data.signal).map(m => m.data.signal.length))"""


def fill(page, values: dict[str, str]) -> None:
    for name, value in values.items():
        field(page, name).fill(value)
        field(page, name).press("Tab")


def choose_experiment(page, name: str) -> None:
    page.locator(".bk-input-group:has(label:text-is('experiment')) select").select_option(name)


def open_form(page, url: str) -> None:
    page.goto(url + "/force")
    page.get_by_text("Launch a FORCE experiment").wait_for(timeout=60_000)


def launch(page, experiment: str) -> str:
    page.get_by_role("button", name="Launch").click()
    queued = page.get_by_text(f"Queued {experiment} run")
    queued.wait_for(timeout=30_000)
    return queued.locator("a").inner_text()


def test_a_training_run_launched_from_the_form_shows_its_traces_as_it_learns(server, page):
    open_form(page, server.url)
    # an empty server has no FORCE pace to estimate by (this module's first test)
    page.get_by_text("Time once it starts: no estimate yet, as no FORCE run on cpu").wait_for(timeout=30_000)
    # 4 s of model time at dt 0.05 ms: 80,000 steps per network, traces one sample per ms;
    # N 1000 so that the run outlasts opening the page (about 12 s on an idle 2-core box)
    fill(page, {"n": "1000", "warmup_s": "0.1", "learn_s": "3.8", "test_s": "0.1"})
    run_id = launch(page, "train")
    page.goto(f"{server.url}/force?id={run_id}")
    page.get_by_text(f"FORCE run {run_id}").wait_for(timeout=60_000)
    titles = page.evaluate(TITLES_JS)
    assert any(t.startswith("LIF network: target vs output") for t in titles), titles
    assert any(t.startswith("rate network: target vs output") for t in titles), titles
    # no reload from here: the traces are re-read when the live feed reports progress
    seen = [page.evaluate(TRACE_SAMPLES_JS)]
    deadline = time.monotonic() + 180
    while seen[-1] < 4000 and time.monotonic() < deadline:
        time.sleep(0.5)
        seen.append(page.evaluate(TRACE_SAMPLES_JS))
    assert seen[-1] == 4000, seen
    assert seen[0] < 4000, "the run finished before the page opened: nothing was live"
    page.locator("td", has_text="succeeded").wait_for(timeout=60_000)
    page.wait_for_function(f"() => ({TITLES_JS})().some(t => t.includes('phi_rate vs phi_spike: slope'))",
                           timeout=30_000, polling=500)
    with httpx.Client(base_url=server.url) as http:
        result = http.get(f"/api/runs/{run_id}/artifacts/result.json").json()
    assert result["complete"] and set(result["networks"]) == {"lif", "rate"}
    assert result["params"]["config"]["n"] == 1000  # what the form sent
    # once it has finished, the form estimates by its pace (network-steps x N^2), and follows the fields
    with httpx.Client(base_url=server.url) as http:
        run = http.get(f"/api/runs/{run_id}").json()
    pace = (run["finished_at"] - run["started_at"]) / work("train", run["config"]["params"])
    open_form(page, server.url)
    page.get_by_text("at the pace of 1 finished run(s) of the train experiment").wait_for(timeout=30_000)
    fill(page, {"n": "4000"})
    expected = format_duration(pace * work("train", validate("train", {"config": {"n": 4000}})))
    page.get_by_text(f"Time once it starts: about {expected}, at the pace").wait_for(timeout=30_000)


def test_a_tiny_grid_fills_both_heatmaps_and_a_clicked_cell_opens(server, page):
    open_form(page, server.url)
    choose_experiment(page, "grid")
    field(page, "q_values").wait_for(timeout=30_000)
    fill(page, {"q_values": "[5, 10]", "g_values": "[0.05, 0.1]", "batch": "4", "n": "30",
                "warmup_s": "0.02", "learn_s": "0.05", "test_s": "0.02"})
    run_id = launch(page, "grid")
    page.goto(f"{server.url}/force?id={run_id}")
    page.get_by_text("(4 of 4 units)").wait_for(timeout=180_000)  # the header, refreshed live
    titles = page.evaluate(TITLES_JS)
    for expected in ("LIF: log10 test error", "rate: log10 test error", "both: decoder r"):
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    lif_map = page.locator(".bk-Figure").first
    box = lif_map.bounding_box()
    # bottom-left cell: the smallest Q (up) and G (across)
    lif_map.click(position={"x": box["width"] * 0.3, "y": box["height"] * 0.65})
    details = page.get_by_text("Point Q = 5, G = 0.05")
    details.wait_for(timeout=30_000)
    assert page.locator("th", has_text="LIF").count() >= 1
    assert page.get_by_text("decoders phi_spike vs phi_rate: r").count() == 1


def test_bad_fields_are_marked_and_nothing_is_queued(server, page):
    open_form(page, server.url)
    choose_experiment(page, "grid")
    field(page, "q_values").wait_for(timeout=30_000)
    fill(page, {"q_values": "[5,"})
    page.get_by_role("button", name="Launch").click()
    page.locator(".field-error", has_text="not JSON").wait_for(timeout=30_000)
    fill(page, {"q_values": "[5]", "n": "-5"})
    page.get_by_role("button", name="Launch").click()
    page.locator(".field-error", has_text="-5").wait_for(timeout=30_000)
    assert page.get_by_text("a field needs attention").count() == 1
    with httpx.Client(base_url=server.url) as http:
        runs = http.get("/api/runs", params={"kind": "force", "limit": 1000}).json()["data"]
    assert all(r["config"]["params"]["config"]["n"] != -5 for r in runs)
