"""The Studies page in a real Chromium against a real server (fixtures shared with
test_dashboard.py): launch a preset from the page, watch it finish live, read its report."""

from __future__ import annotations

import json

import httpx
import pytest

from jobs.models import RunState
from tests.app.test_dashboard import TITLES_JS, browser, page, server  # noqa: F401 (fixtures)
from tests.conftest import small_config

# a study that trains one tiny PING network for two epochs
SMOKE_OVERRIDES = {"arch": ["ping"], "seed": [42], "n_e": 40, "n_i": 10, "t_ms": 20.0, "batch_size": 200}
NB024_PLOTS = ["Spike budget", "Accuracy vs E rate per run", "Test accuracy", "Test loss", "E rate",
               "I rate", "||W_in||_F", "||grad|| / ||W_out||", "Per-cell E rates, PING", "W_in values, init vs end",
               "W_out values, init vs end"]


def textarea(page, name: str):
    return page.locator(f".bk-input-group:has(label:text-is('{name}')) textarea").first


def select(page, name: str):
    return page.locator(f".bk-input-group:has(label:text-is('{name}')) select").first


def wait_study(http: httpx.Client, study_id: str, timeout_s: float = 240) -> dict:
    import time

    deadline = time.monotonic() + timeout_s
    while True:
        study = http.get(f"/api/studies/runs/{study_id}").json()
        if study["state"] in ("succeeded", "failed", "cancelled"):
            return study
        assert time.monotonic() < deadline, study
        time.sleep(0.5)


@pytest.fixture(scope="module")
def source_run(server):  # noqa: F811
    with server.client() as client:
        run = client.submit_run(small_config(t_ms=60.0, epochs=1, lr=1e-2))
        assert client.wait(run.id, timeout_s=300).state == RunState.SUCCEEDED
    return run.id


def test_launch_a_smoke_study_and_see_it_finish_live(server, page):  # noqa: F811
    page.goto(server.url + "/studies")
    page.get_by_text("Launch settings").wait_for(timeout=60_000)
    select(page, "tier").select_option("smoke")
    page.locator(".bk-input-group:has(label:text-is(\"epochs (0: preset's)\")) input").first.fill("2")
    textarea(page, "overrides (JSON)").fill(json.dumps(SMOKE_OVERRIDES))
    textarea(page, "overrides (JSON)").press("Tab")
    page.get_by_role("button", name="Launch nb024").click()
    # nothing is queued before the cost was shown and confirmed
    page.get_by_text("Estimated time").wait_for(timeout=30_000)
    page.get_by_role("button", name="Launch nb024 now").click()
    page.get_by_text("Queued study").wait_for(timeout=30_000)
    study_id = page.get_by_text("Queued study").locator("a").inner_text()
    row = page.locator(".tabulator-row", has_text=study_id)
    row.wait_for(timeout=30_000)
    # no reload: the row's state comes through the live feed
    row.locator("text=succeeded").wait_for(timeout=120_000)
    assert "1/1" in row.inner_text()

    page.goto(f"{server.url}/studies?id={study_id}")
    page.get_by_text("Member runs").wait_for(timeout=60_000)
    page.wait_for_function(f"() => ({TITLES_JS})().length >= {len(NB024_PLOTS)}", timeout=60_000)
    titles = page.evaluate(TITLES_JS)
    for expected in NB024_PLOTS:
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    assert page.get_by_text("E-rate slope (Hz/ep)").count() >= 1  # the seed table
    with httpx.Client(base_url=server.url) as http:
        markdown = http.get(page.get_by_role("link", name="report.md").get_attribute("href"))
        assert markdown.status_code == 200 and "## Seed table" in markdown.text
        table = http.get(page.get_by_role("link", name="report.csv").get_attribute("href"))
        assert table.status_code == 200 and table.text.startswith("label,") and len(table.text.splitlines()) == 2
    compare = page.get_by_role("link", name="Compare the 1 training runs →").get_attribute("href")
    assert compare.startswith("/compare?runs=")


def test_bad_launches_are_explained(server, page):  # noqa: F811
    studies = httpx.get(server.url + "/api/studies/runs").json()["count"]
    page.goto(server.url + "/studies")
    page.get_by_text("Launch settings").wait_for(timeout=60_000)
    textarea(page, "overrides (JSON)").fill('{"colour": 1}')
    textarea(page, "overrides (JSON)").press("Tab")
    page.get_by_role("button", name="Launch nb024").click()
    page.get_by_text("overrides.colour").wait_for(timeout=30_000)
    textarea(page, "overrides (JSON)").fill("{nope")
    textarea(page, "overrides (JSON)").press("Tab")
    page.get_by_role("button", name="Launch nb024").click()
    page.get_by_text("overrides are not JSON").wait_for(timeout=30_000)
    textarea(page, "overrides (JSON)").fill("")
    textarea(page, "overrides (JSON)").press("Tab")
    page.get_by_role("button", name="Launch nb042").click()
    page.get_by_text("source_run_id").wait_for(timeout=30_000)
    assert httpx.get(server.url + "/api/studies/runs").json()["count"] == studies  # nothing was queued


@pytest.mark.parametrize("preset,overrides,figures", [
    ("coupling", {"samples": 8, "factors": [0, 1, 2]},
     ["Coupling sweep: total rate", "Diagonal (W_ei = W_ie multiplier): rates",
      "Diagonal (W_ei = W_ie multiplier): accuracy"]),
    ("nb038", {"samples": 8, "input_scales": [0.0, 1.0, 2.0], "loop_scales": [0.0, 1.0]},
     ["f-I curves", "f-I: accuracy", "Loop transfer: E and I rate", "Loop transfer: accuracy"]),
    ("nb042", {"samples": 8}, ["Phase shuffle: E rate (release factor"]),
    ("nb037", {"samples": 8, "fractions": [0.25]}, ["Drop / add: accuracy", "Drop / add: delivered E rate",
                                                   "Drop / add: spike-pattern change", "Drop / add: I rate"]),
])
def test_an_inference_study_report_shows_its_figures(server, source_run, page, preset, overrides, figures):  # noqa: F811
    with httpx.Client(base_url=server.url, timeout=30) as http:
        created = http.post(f"/api/studies/{preset}", json={"overrides": overrides, "source_run_id": source_run})
        assert created.status_code == 201, created.text
        assert wait_study(http, created.json()["id"])["state"] == "succeeded"
    page.goto(f"{server.url}/studies?id={created.json()['id']}")
    page.get_by_text("Member runs").wait_for(timeout=60_000)
    titles = page.evaluate(TITLES_JS)
    for expected in figures:
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    assert page.get_by_role("link", name=source_run).count() >= 1
    assert page.get_by_role("button", name="SVG").count() == len(figures)
