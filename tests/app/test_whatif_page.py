"""The What-if page in a real Chromium: drive the sliders on a small trained run and
check that the figures move the way the physics says they must."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from engine import train
from engine.config import Config
from jobs.models import RunState
from jobs.paths import DataDir
from jobs.service import JobService
from jobs.store import RunStore
from tests.app.conftest import REPO
from tests.app.test_whatif_api import PING_200, patient_server
from tests.conftest import small_config

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-output" / "screenshots"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")
# the order of the page's sliders
SLIDERS = ("w_ei_scale", "w_ie_scale", "w_in_scale", "max_rate_hz", "tau_gaba_ms")
SOURCE_LENGTHS_JS = """() => Object.fromEntries(Bokeh.documents.flatMap(d => [...d.all_models])
    .filter(m => m.data && m.name).map(m => [m.name, Object.values(m.data)[0]?.length ?? 0]))"""


@pytest.fixture(scope="module")
def served_run(tmp_path_factory):
    """A dashboard server over a store with one succeeded 1-epoch run (200 ms trials: a spectrum of 150 bins)."""
    data = DataDir.at(tmp_path_factory.mktemp("whatif-page") / "data")
    store = RunStore(data.db_path)
    run = JobService(store, data).submit_run(small_config(**{**PING_200, "t_ms": 200.0}))
    train(Config.from_dict(run.config), data.run_dir(run.id))
    store.claim_next()
    store.transition(run.id, RunState.SUCCEEDED)
    store.close()
    server = patient_server(data.root, dashboard=True)
    yield server, run.id
    server.stop()


@pytest.fixture
def page(served_run, request):
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1500, "height": 1100})
        page.set_default_timeout(120_000)  # the first page builds the run's network (imports, loads)
        page.set_default_navigation_timeout(180_000)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        yield page
        SHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
        browser.close()
        assert errors == []


def state(page) -> dict:
    return json.loads(page.locator(".whatif-state").text_content())


def wait_for(page, timeout_s: float = 120.0, **knobs) -> dict:
    """The drawn frame once its knobs include `knobs` (Playwright's locators see into Panel's shadow DOM)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        element = page.locator(".whatif-state")
        if element.count():
            drawn = json.loads(element.text_content())
            if all(drawn["knobs"][k] == v for k, v in knobs.items()):
                return drawn
        page.wait_for_timeout(200)
    raise AssertionError(f"no frame with {knobs} in {timeout_s} s")


def set_slider(page, name: str, value: float) -> None:
    box = page.locator(".slider-edit input").nth(SLIDERS.index(name))
    box.fill(str(value))
    box.press("Enter")


def test_couplings_move_the_figures_the_way_physics_says(served_run, page):
    server, run_id = served_run
    page.goto(f"{server.url}/whatif?run={run_id}")
    trained = wait_for(page)
    assert trained["knobs"]["w_ie_scale"] == 1.0 and trained["rate_e_hz"] > 0 and trained["rate_i_hz"] > 0
    page.get_by_text("weights of epoch 1)").wait_for()  # which weights the page simulates
    assert trained["gamma_peak_hz"] is not None
    drawn = page.evaluate(SOURCE_LENGTHS_JS)
    assert drawn["raster_e"] > 0 and drawn["raster_i"] > 0 and drawn["spectrum"] > 0

    # W_ie x 0: nothing inhibits E, which fires at its open-loop rate; the rhythm goes
    set_slider(page, "w_ie_scale", 0)
    free = wait_for(page, w_ie_scale=0)
    assert free["rate_e_hz"] > 2 * trained["rate_e_hz"]
    # the gamma peak goes: the spectrum flattens and its maximum leaves the trained rhythm's frequency
    assert free["prominence"] < 0.75 * trained["prominence"]
    assert free["gamma_peak_hz"] is None or abs(free["gamma_peak_hz"] - trained["gamma_peak_hz"]) > 10
    assert not free["rhythm"]  # the page says so: below the studies' prominence bound

    # reset, then W_ei x 0: nothing drives I, which falls silent (and E is open-loop again)
    page.get_by_role("button", name="Reset to trained").click()
    back = wait_for(page, w_ie_scale=1)
    assert back["rate_e_hz"] == trained["rate_e_hz"]
    set_slider(page, "w_ei_scale", 0)
    silent_i = wait_for(page, w_ei_scale=0)
    assert silent_i["rate_i_hz"] == 0.0
    assert silent_i["rate_e_hz"] == pytest.approx(free["rate_e_hz"])
    assert page.evaluate(SOURCE_LENGTHS_JS)["raster_i"] == 0

    # far past the trained couplings forward Euler overshoots: the page says so, after the frame
    set_slider(page, "w_ei_scale", 100)
    set_slider(page, "w_ie_scale", 100)
    wait_for(page, w_ei_scale=100, w_ie_scale=100)
    page.get_by_text("forward Euler unstable here").wait_for()
    page.get_by_role("button", name="Reset to trained").click()
    wait_for(page, w_ei_scale=1, w_ie_scale=1)
    page.get_by_text("forward Euler stable on the picked image").wait_for()


def test_save_as_run_opens_a_prefilled_form(served_run, page):
    server, run_id = served_run
    page.goto(f"{server.url}/whatif?run={run_id}&ei=2&ie=0.5")
    opened = wait_for(page, w_ei_scale=2, w_ie_scale=0.5)
    assert opened["knobs"]["tau_gaba_ms"] == 9.0
    page.get_by_role("button", name="Save as run…").click()
    ie = page.locator(".bk-input-group:has(label:text-is('ie_strength')) input").first
    ie.wait_for(timeout=30_000)
    ei = page.locator(".bk-input-group:has(label:text-is('ei_strength')) input").first
    assert float(ie.input_value()) == pytest.approx(PING_200["ie_strength"] * 0.5)
    assert float(ei.input_value()) == pytest.approx(PING_200["ei_strength"] * 2)
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("Queued run").wait_for(timeout=30_000)
    # a fine-tune of this run from the slider position, not a fresh run at that coupling
    queued = httpx.get(f"{server.url}/api/runs", params={"state": "queued", "kind": "train"}).json()["data"][0]
    assert queued["config"]["init_run"] == run_id
    assert (queued["config"]["init_w_ei_scale"], queued["config"]["init_w_ie_scale"]) == (2.0, 0.5)
    assert queued["config"]["init_w_in_scale"] == 1.0
