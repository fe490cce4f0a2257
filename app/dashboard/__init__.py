"""The Panel dashboard, served by the API's own process on the same services.

`mount_dashboard(app, services)` adds the pages (one module each), the live
feed that pushes run changes to open pages, the static assets and the session
count the leak test watches.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from panel.io.fastapi import add_applications
from pydantic import BaseModel

from app.api.deps import Services
from app.dashboard import access, compare_page, coupling_page, run_page, runs_page, sessions
from app.dashboard import force_page
from app.dashboard import studies_page
from app.dashboard import whatif_page
from app.dashboard.live import LiveFeed

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
# A closed tab's session goes once its websocket is gone (see sessions.py) and
# Bokeh's sweep finds it unused; a page opened without a websocket (a crawler, a
# stray GET) lingers at most this long.
UNUSED_SESSION_MS = 6_000
CHECK_UNUSED_MS = 1_000


class DashboardSessions(BaseModel):
    sessions: int
    live_subscribers: int


def mount_dashboard(app: FastAPI, services: Services) -> None:
    sessions.install()
    feed = LiveFeed(services.jobs)
    pages = {path: _page(module.create, services, feed) for path, module in (
        ("/", runs_page), ("/run", run_page), ("/compare", compare_page), ("/coupling", coupling_page),
        ("/force", force_page), ("/studies", studies_page),
        ("/whatif", whatif_page))}
    bokeh_app = add_applications(
        pages, app=app, title={"/": "Runs · spikeboard", "/run": "Run · spikeboard",
                               "/compare": "Compare · spikeboard", "/coupling": "Coupling sweep · spikeboard",
                               "/force": "FORCE · spikeboard", "/studies": "Studies · spikeboard",
                               "/whatif": "What-if · spikeboard"},
        unused_session_lifetime_milliseconds=UNUSED_SESSION_MS,
        check_unused_sessions_milliseconds=CHECK_UNUSED_MS)
    # the pages are HTML for browsers, not API operations: a client generated from the
    # OpenAPI should not get them (they were listed under "default" in /docs)
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path in pages:
            route.include_in_schema = False
    # Bokeh's own /static holds BokehJS; ours lives under /assets
    app.mount("/assets", StaticFiles(directory=STATIC_DIR), name="assets")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        return FileResponse(STATIC_DIR / "favicon.ico")

    @app.get("/api/dashboard/sessions", tags=["dashboard"])
    def dashboard_sessions() -> DashboardSessions:
        """Live dashboard sessions (one per open tab) and live-feed subscribers."""
        return DashboardSessions(sessions=sessions.live_sessions(bokeh_app), live_subscribers=feed.subscribers)

    # the request guard (app/security.py) caps page sessions with these
    app.state.dashboard_probe.pages = frozenset(pages)
    app.state.dashboard_probe.live_sessions = lambda: sessions.live_sessions(bokeh_app)
    if services.settings.token:
        access.install(app, services.settings.token)
    _run_with_app(app, feed.run)


def _page(create, services: Services, feed: LiveFeed):
    # Panel serves plain functions only (not partials): one call per session
    def session_page():
        return create(services, feed)
    return session_page


def _run_with_app(app: FastAPI, task_factory) -> None:
    """Run a background task for the app's lifetime (beside its own lifespan)."""
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app_: FastAPI):
        async with inner(app_) as state:
            task = asyncio.create_task(task_factory())
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
