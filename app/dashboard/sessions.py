"""What bokeh-fastapi 0.1.8 leaves to its host, done here (shared/DESIGN.md).

1. A closed tab must end its session. Starlette's `WebSocket.receive()` answers a
   disconnect with a message instead of raising, so bokeh-fastapi's receive loop
   never reaches its `client_lost` and the session, with its callbacks and its
   live-feed subscription, lives forever (bokeh-fastapi issue #19). We detach the
   connection whenever the loop ends; Bokeh's unused-session sweep then destroys
   the session and Panel runs its `on_session_destroyed` callbacks.
2. The websocket's Origin must be the page's own host: bokeh-fastapi ignores
   `websocket_origin`, so any site a user visits could otherwise open a
   dashboard session with the user's network access. (A reverse proxy must pass
   the Host header through, as nginx's `proxy_set_header Host $host` does.)
"""

from __future__ import annotations

import logging
from urllib.parse import urlparse

from bokeh_fastapi import BokehFastAPI
from bokeh_fastapi.handler import WSHandler

log = logging.getLogger("app.dashboard")

_ORIGINAL_RECEIVE_LOOP = WSHandler._receive_loop
_ORIGINAL_CONNECT = WSHandler.ws_connect
POLICY_VIOLATION = 1008  # websocket close code


async def _receive_loop_then_detach(self: WSHandler) -> None:
    try:
        await _ORIGINAL_RECEIVE_LOOP(self)
    finally:
        connection, self.connection = self.connection, None
        if connection is not None:
            self.application.client_lost(connection)


def origin_allowed(origin: str | None, host: str | None) -> bool:
    """Same host as the page. No Origin header: not a browser, and a non-browser
    client could send any header anyway (the API token guards mutations)."""
    if origin is None:
        return True
    return urlparse(origin).netloc.lower() == (host or "").lower()


async def _connect_checking_origin(self: WSHandler, websocket) -> None:
    origin, host = websocket.headers.get("origin"), websocket.headers.get("host")
    if not origin_allowed(origin, host):
        log.warning("refused a dashboard websocket from origin %r (host %r)", origin, host)
        await websocket.close(code=POLICY_VIOLATION)
        return
    await _ORIGINAL_CONNECT(self, websocket)


def install() -> None:
    """Patch bokeh-fastapi's websocket handler (process-wide; idempotent)."""
    WSHandler._receive_loop = _receive_loop_then_detach
    WSHandler.ws_connect = _connect_checking_origin


def live_sessions(bokeh_app: BokehFastAPI) -> int:
    """Sessions alive across all pages (what the 20-tab leak test watches)."""
    # bokeh-fastapi has no public accessor for its application contexts
    return sum(len(context.sessions) for context in bokeh_app._applications.values())
