"""The dashboard in a real Chromium against a real server on 127.0.0.1.

Screenshots land in test-output/screenshots/ for a person to look at.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import httpx
import pytest

from app.dashboard.compare_page import ARCH_COLORS
from app.dashboard.sessions import origin_allowed
from jobs.models import RunState
from tests.app.conftest import REPO, start_server
from tests.conftest import small_config

playwright_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = Path("/usr/bin/chromium")
SHOTS = REPO / "test-output" / "screenshots"
pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install chromium)")

RUN_PLOTS = ["Accuracy", "Loss", "Firing rates", "Accuracy vs E rate", "||W||_F", "||grad|| / ||W||",
             "Per-cell E rates", "Per-cell I rates", "W_in values, init vs end", "W_out values, init vs end",
             "Spike raster (test image 0", "E population rate", "Spectrum of the E population rate"]
TITLES_JS = """() => Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.type === 'Title' || m.constructor.name === 'Title').map(m => m.text)"""
# longest 'epoch' column any plot holds (the trajectories' data)
BAR_COLORS_JS = """() => Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.type === 'CategoricalColorMapper')
                 .map(m => ({factors: [...m.factors], palette: [...m.palette]}))"""
EPOCHS_JS = """() => Math.max(0, ...Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.data && m.data.epoch).map(m => m.data.epoch.length))"""
RASTER_SPIKES_JS = """() => Math.max(0, ...Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.data && m.data['time (ms)'] && m.data.cell).map(m => m.data.cell.length))"""
# the axis ranges of the figures whose title starts with a prefix
# the (W_ei, W_ie) cells under the heatmap's crosses (forward Euler unstable)
CROSSES_JS = """() => Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.glyph && JSON.stringify(m.glyph.marker ?? null).includes('"x"') && m.data_source.data.W_ei)
                 .flatMap(m => m.data_source.data.W_ei.map((x, i) => [x, m.data_source.data.W_ie[i]]))"""
# the multipliers under the diagonal charts' crosses
DIAGONAL_CROSSES_JS = """() => Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.glyph && JSON.stringify(m.glyph.marker ?? null).includes('"x"') && m.data_source.data.multiplier)
                 .flatMap(m => [...m.data_source.data.multiplier])"""
RANGES_JS = """(prefix) => Bokeh.documents.flatMap(d => [...d.all_models])
                 .filter(m => m.x_range && m.title && m.title.text && m.title.text.startsWith(prefix))
                 .map(m => ({x: [m.x_range.start, m.x_range.end], y: [m.y_range.start, m.y_range.end],
                             toolbar: m.toolbar_location}))"""


def raster_axes_cover_the_trial(page, t_ms: float, cells: int) -> None:
    """The raster's axes span the trial and every cell (they stayed 0..1 once: no glyph showed)."""
    page.wait_for_function(f"() => ({RANGES_JS})('Spike raster (test image').some(r => r.x[1] > 1)",
                           timeout=30_000, polling=500)
    (ranges,) = page.evaluate(RANGES_JS, "Spike raster (test image")
    assert ranges["x"] == [0, t_ms] and ranges["y"] == [0, cells], ranges


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("dashboard") / "data", workers=1, dashboard=True)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def finished_run(server):
    """A trained run long enough (100 ms trials) for a spectrum."""
    with server.client() as client:
        run = client.submit_run(small_config(t_ms=100.0, epochs=3, lr=1e-2))
        assert client.wait(run.id, timeout_s=300).state == RunState.SUCCEEDED
    return run.id


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        yield browser
        browser.close()


class Console:
    """Browser console errors and uncaught page errors of one page."""

    def __init__(self, page):
        self.errors: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        page.on("pageerror", lambda e: self.errors.append(str(e)))


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1500, "height": 1000})
    context.set_default_navigation_timeout(120_000)  # a page's first load takes > 30 s on a loaded 2-core box
    page = context.new_page()
    page.console = Console(page)
    yield page
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{request.node.name}.png"), full_page=True)
    context.close()
    assert page.console.errors == [], page.console.errors


def field(page, name: str):
    return page.locator(f".bk-input-group:has(label:text-is('{name}')) input").first


def test_launch_from_the_form_and_watch_accuracy_grow(server, page):
    page.goto(server.url + "/")
    page.get_by_text("Launch a run or a sweep").wait_for(timeout=60_000)
    for name, value in (("n_e", "40"), ("n_i", "10"), ("t_ms", "20"), ("epochs", "4"), ("batch_size", "200")):
        field(page, name).fill(value)
        field(page, name).press("Tab")
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("Queued run").wait_for(timeout=30_000)
    run_id = page.get_by_text("Queued run").locator("a").inner_text()
    page.goto(f"{server.url}/run?id={run_id}")
    page.get_by_text("Convergence").first.wait_for(timeout=60_000)
    # no reload from here: points arrive through the live feed
    page.wait_for_function(f"() => ({EPOCHS_JS})() >= 2", timeout=180_000, polling=500)
    assert page.evaluate(EPOCHS_JS) >= 2


def test_a_bad_field_is_marked_on_the_form(server, page):
    page.goto(server.url + "/")
    page.get_by_text("Launch a run or a sweep").wait_for(timeout=60_000)
    field(page, "n_e").fill("-5")
    field(page, "n_e").press("Tab")
    page.get_by_role("button", name="Launch").click()
    page.get_by_text("a field needs attention").wait_for(timeout=30_000)
    error = page.locator(".field-error", has_text="-5")
    error.wait_for(timeout=10_000)
    assert "n_e" not in error.inner_text() or "-5" in error.inner_text()
    with httpx.Client(base_url=server.url) as http:
        assert all(r["config"]["n_e"] != -5 for r in http.get("/api/runs").json()["data"])


def test_a_finished_run_shows_every_plot(server, finished_run, page):
    page.goto(f"{server.url}/run?id={finished_run}")
    page.get_by_text("Convergence").first.wait_for(timeout=60_000)
    # the raster of test image 0 is simulated once the page has loaded
    page.wait_for_function(f"() => ({RASTER_SPIKES_JS})() > 0", timeout=120_000, polling=500)
    raster_axes_cover_the_trial(page, 100.0, 50)
    titles = page.evaluate(TITLES_JS)
    for expected in RUN_PLOTS:
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    assert page.get_by_text("final test accuracy").is_visible()
    # every figure offers its downloads
    assert page.get_by_role("button", name="SVG").count() == len(RUN_PLOTS)


def test_csv_and_svg_downloads_carry_the_plotted_data(server, finished_run, page):
    page.goto(f"{server.url}/run?id={finished_run}")
    page.get_by_text("Convergence").first.wait_for(timeout=60_000)
    with page.expect_download() as csv_download:
        page.get_by_role("button", name="CSV").first.click()
    rows = Path(csv_download.value.path()).read_text().splitlines()
    assert rows[0].startswith("epoch") and len(rows) == 1 + 3  # header + one row per epoch
    with page.expect_download() as svg_download:
        page.get_by_role("button", name="SVG").first.click()
    assert Path(svg_download.value.path()).read_text().lstrip().startswith(("<?xml", "<svg"))


def test_a_small_coupling_sweep_fills_in_and_a_cell_opens(server, finished_run, page):
    page.goto(f"{server.url}/coupling?run={finished_run}")
    page.get_by_text("Run coupling sweep").wait_for(timeout=60_000)
    # an empty field is explained once, without the field's name twice
    field(page, "multipliers (both axes)").fill("")
    field(page, "multipliers (both axes)").press("Tab")
    page.get_by_role("button", name="Run coupling sweep").click()
    page.get_by_text("Multipliers: give one or more numbers").wait_for(timeout=30_000)
    field(page, "multipliers (both axes)").fill("0, 1, 2")
    field(page, "multipliers (both axes)").press("Tab")
    field(page, "test images (0: all)").fill("20")
    field(page, "test images (0: all)").press("Tab")
    page.get_by_role("button", name="Run coupling sweep").click()
    page.get_by_text(re.compile(r"\d of 9 cells")).wait_for(timeout=30_000)  # its size from the start, not "?"
    page.get_by_text("9 of 9 cells").wait_for(timeout=180_000)
    titles = page.evaluate(TITLES_JS)
    assert any(t.startswith("Coupling sweep: total rate") for t in titles)
    assert sum(t.startswith("Diagonal") for t in titles) == 2
    # the diagonal's axes followed the cells as they came in (they kept 0..1 once)
    page.wait_for_function(f"() => ({RANGES_JS})('Diagonal').every(r => r.x[0] <= 0 && r.x[1] >= 2)",
                           timeout=30_000, polling=500)
    (heatmap_figure,) = page.evaluate(RANGES_JS, "Coupling sweep")
    assert heatmap_figure["toolbar"] == "above"  # not over the colour bar's ticks
    # the labels' ink per cell is checked on the rendered figure in tests/app/test_plots.py
    heatmap = page.locator(".bk-Figure").first
    box = heatmap.bounding_box()
    heatmap.click(position={"x": box["width"] * 0.45, "y": box["height"] * 0.5})  # the middle cell (1, 1)
    page.get_by_text("raster of test image 0").wait_for(timeout=120_000)
    assert page.evaluate(RASTER_SPIKES_JS) > 0
    raster_axes_cover_the_trial(page, 100.0, 50)
    # after a reload the field shows the sweep on screen, not the defaults
    page.reload()
    page.get_by_text("9 of 9 cells").wait_for(timeout=60_000)
    assert field(page, "multipliers (both axes)").input_value() == "0, 1, 2"
    assert field(page, "test images (0: all)").input_value() == "20"
    assert page.evaluate(CROSSES_JS) == []  # a stable sweep: no cell crossed, no warning
    assert page.get_by_text("Forward Euler is unstable").count() == 0
    # 100 x the trained coupling leaves forward Euler's stable range: the cells say so
    field(page, "multipliers (both axes)").fill("1, 100")
    field(page, "multipliers (both axes)").press("Tab")
    field(page, "test images (0: all)").fill("4")
    field(page, "test images (0: all)").press("Tab")
    page.get_by_role("button", name="Run coupling sweep").click()
    page.get_by_text("4 of 4 cells").wait_for(timeout=120_000)
    page.get_by_text(re.compile(r"Forward Euler is unstable in [1-4] of 4 cells")).wait_for(timeout=30_000)
    page.wait_for_function(f"() => ({CROSSES_JS})().length > 0", timeout=30_000, polling=500)
    assert ["100", "100"] in page.evaluate(CROSSES_JS) and ["1", "1"] not in page.evaluate(CROSSES_JS)
    assert sorted(set(page.evaluate(DIAGONAL_CROSSES_JS))) == [100]  # on both diagonal charts, at x100 only


def test_compare_page_overlays_runs_and_tabulates_seeds(server, finished_run, page):
    with server.client() as client:
        other = client.submit_run(small_config(arch="coba", t_ms=100.0, epochs=2, lr=1e-2))
        # the seed's recipe too: the table gains a recipe column
        seed = client.submit_run(small_config(recipe="seed", n_i=10, t_ms=40.0, epochs=1))
        assert client.wait(other.id, timeout_s=300).state == RunState.SUCCEEDED
        assert client.wait(seed.id, timeout_s=300).state == RunState.SUCCEEDED
    # reached as a user does: tick the rows, press "Compare selected"
    page.goto(server.url + "/")
    for run_id in (finished_run, other.id, seed.id):
        # the row whose id this is (an analysis row names its source run too)
        page.get_by_role("row", name=re.compile(rf"^Select Row {run_id}\b")).get_by_label("Select Row").check()
    page.get_by_role("button", name="Compare selected").click()
    page.wait_for_url(re.compile(r".*/compare\?runs=\w+,\w+,\w+$"), timeout=30_000)
    page.get_by_text("Compare 3 runs").wait_for(timeout=60_000)
    titles = page.evaluate(TITLES_JS)
    for expected in ("Test accuracy", "E rate", "I rate", "Test loss", "Per-cell E rates", "Per-cell I rates",
                     "Spike budget"):
        assert any(t.startswith(expected) for t in titles), (expected, titles)
    assert page.get_by_text("acc slope (pp/ep)").count() >= 1
    # every cell of the seed table reads in full in a 1500-px window: laid out by its data,
    # the last column was cut ("succeedec")
    table = page.locator(".tabulator", has_text="acc slope").first
    clipped = table.evaluate("t => [...t.querySelectorAll('.tabulator-cell')].filter(c => "
                             "c.textContent.trim() && c.scrollWidth > c.clientWidth + 1).map(c => c.textContent)")
    assert clipped == [], clipped
    # one run, one colour: the budget's bars take the run's colour in every figure, its arch's
    mappers = page.evaluate(BAR_COLORS_JS)
    bars = next(m for m in mappers if any(f.endswith(finished_run[:4]) for f in m["factors"]))
    colors = dict(zip(bars["factors"], bars["palette"]))
    for arch, run_id in (("ping", finished_run), ("coba", other.id)):
        name = next(f for f in bars["factors"] if f.endswith(run_id[:4]))
        assert colors[name].lower() == ARCH_COLORS[arch].lower(), (name, colors)


def test_closed_tabs_give_their_sessions_back(server, browser):
    def sessions_after(deadline_s: float, done) -> int:
        deadline = time.monotonic() + deadline_s
        while True:
            count = httpx.get(server.url + "/api/dashboard/sessions").json()["sessions"]
            if done(count) or time.monotonic() > deadline:
                return count
            time.sleep(1)

    # earlier tests' closed pages are still being reaped: start from none
    baseline = sessions_after(60, lambda n: n == 0)
    assert baseline == 0
    context = browser.new_context()
    tabs = [context.new_page() for _ in range(20)]
    for tab in tabs:
        tab.goto(server.url + "/")
    for tab in tabs:
        tab.get_by_text("Launch a run or a sweep").wait_for(timeout=120_000)
    assert sessions_after(0, lambda n: True) == 20
    context.close()
    assert sessions_after(60, lambda n: n == baseline) == baseline


@pytest.mark.parametrize("origin,host,allowed", [
    ("http://127.0.0.1:8000", "127.0.0.1:8000", True),
    ("http://evil.example", "127.0.0.1:8000", False),
    ("http://127.0.0.1:9999", "127.0.0.1:8000", False),
    (None, "127.0.0.1:8000", True),
])
def test_websocket_origin_must_be_the_pages_host(origin, host, allowed):
    assert origin_allowed(origin, host) is allowed


def test_pages_assets_and_the_api_share_one_server(server, queue_only_server):
    with httpx.Client(base_url=server.url) as http:
        for path in ("/", "/run?id=nosuchrun", "/compare", "/coupling", "/favicon.ico", "/assets/spikeboard.css"):
            assert http.get(path).status_code == 200, path
        assert http.get("/api/dashboard/sessions").json()["sessions"] >= 0
    # an API-only server (SPIKEBOARD_DASHBOARD=0) serves no pages
    assert httpx.get(queue_only_server.url + "/").status_code == 404


def test_with_a_token_the_dashboard_asks_for_it(server_factory, browser):
    token = "base64/like+token=="  # characters a cookie cannot hold as they are
    guarded = server_factory(token=token, dashboard=True)
    with httpx.Client(base_url=guarded.url) as http:
        assert http.get("/").status_code == 303 and http.get("/").headers["location"].startswith("/login")
        # the page asked for comes back after signing in, query string included
        assert http.get("/run?id=abc").headers["location"] == "/login?next=%2Frun%3Fid%3Dabc"
        assert http.get("/api/health").status_code == 200  # the API keeps its own bearer check
        assert http.post("/login", data={"token": "wrong-token", "next": "/"}).status_code == 401
        signed_in = http.post("/login", data={"token": token, "next": "/"})
        assert signed_in.status_code == 303 and "spikeboard_token" in signed_in.cookies
        assert token not in signed_in.headers["set-cookie"]
        assert http.get("/").status_code == 200  # the cookie httpx kept opens the pages
    context = browser.new_context()
    page = context.new_page()
    console = Console(page)
    page.goto(guarded.url + "/coupling")
    page.locator("input[name=token]").fill(token)
    page.get_by_role("button", name="Open the dashboard").click()
    page.get_by_text("Which run?").wait_for(timeout=60_000)  # the page and its websocket came up
    context.close()
    assert console.errors == []


def test_a_websocket_from_another_origin_is_refused(tmp_path):
    from fastapi.testclient import TestClient
    from starlette.websockets import WebSocketDisconnect

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "data", workers=0))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        with pytest.raises(WebSocketDisconnect) as refused:
            with client.websocket_connect("/ws", headers={"origin": "http://evil.example"}):
                pass
        assert refused.value.code == 1008


def test_the_pages_are_served_but_not_listed_as_api_operations(tmp_path):
    """/docs listed the dashboard's HTML pages under "default", and a client generated from
    the OpenAPI got a method per page."""
    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings

    app = create_app(Settings(data_dir=tmp_path / "data", workers=0))
    with TestClient(app, base_url="http://127.0.0.1:8000") as client:
        paths = client.get("/openapi.json").json()["paths"]
        assert not {"/", "/run", "/compare", "/coupling", "/force", "/studies", "/whatif"} & set(paths)
        untagged = [(p, m) for p, ops in paths.items() for m, op in ops.items() if not op.get("tags")]
        assert untagged == [] and "/api/runs" in paths
        assert client.get("/compare").status_code == 200  # still a page
