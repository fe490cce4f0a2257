"""What a browser tab on another site, a hostile Host header or a stray URL may
not do to the server (docs/RELIABILITY.md, "Cross-site pages").

`RequestGuard` is one ASGI middleware in front of everything (API, dashboard,
Panel's handlers):

- Host: only the served names (loopback names, the bind address, and
  SPIKEBOARD_ALLOWED_HOSTS) are answered, so a DNS-rebinding page that points
  its own name at 127.0.0.1 reaches nothing (400).
- Mutating requests (POST, PUT, PATCH, DELETE) from a browser must come from the
  server's own origin or one in SPIKEBOARD_ALLOWED_ORIGINS (403), and an API
  body must be JSON (415): an HTML form on any page can send text/plain or
  urlencoded bodies cross-site without a CORS preflight, never application/json.
- `/components/...` (Panel's component resource route) serves only the assets
  of Panel's own, already imported, components: Panel would import any module
  named in the URL and answer 500 for what it cannot resolve.
- A dashboard websocket whose Bokeh session token does not parse is refused
  (HTTP 403 at the handshake) instead of failing inside bokeh-fastapi (500).
- A client may hold only a few page sessions that never opened their
  websocket, and the server only so many sessions in all (429 / 503): each page
  GET builds a full Panel session.
- `/login` and wrong bearer tokens are rate-limited per client (429).

The settings are read from SPIKEBOARD_* variables here, beside the code they
govern, so `Settings` (app/settings.py) needs no new fields.
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Callable, Mapping
from urllib.parse import urlsplit

from starlette.types import ASGIApp, Receive, Scope, Send

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")
MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# GETs a page on another site must not be able to start: each writes a copy of the whole store
COSTLY_READS = frozenset({"/api/backup"})
JSON_TYPES = ("application/json",)
# Raw files a remote worker uploads (/api/worker/runs/{id}/files/...). Not a
# CORS-safelisted type: a page on another site cannot send it without a preflight,
# which this server never grants, so it is as safe from forms as JSON is.
BINARY_TYPES = ("application/octet-stream",)
COMPONENT_PREFIX = "/components/"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 and localhost: reachable from this machine only."""
    host = host.strip("[]").lower()
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class BindRefused(SystemExit):
    """`serve` on a public address without a token, not explicitly allowed."""


def check_bind(host: str, token: str | None, environ: Mapping[str, str] | None = None) -> None:
    """Refuse to serve a non-loopback address without a token unless
    SPIKEBOARD_ALLOW_PUBLIC_WITHOUT_TOKEN=1 says so explicitly: anyone who can
    reach the port could queue, cancel and delete runs."""
    environ = os.environ if environ is None else environ
    if token or is_loopback(host):
        return
    if _flag(environ.get("SPIKEBOARD_ALLOW_PUBLIC_WITHOUT_TOKEN")):
        print(f"warning: serving {host} without a token (SPIKEBOARD_ALLOW_PUBLIC_WITHOUT_TOKEN=1): anyone who "
              "can reach this port can queue, cancel and delete runs", file=sys.stderr)
        return
    raise BindRefused(f"refusing to serve on {host} without a token: pass --token (or set SPIKEBOARD_TOKEN, "
                      "8+ characters), bind 127.0.0.1, or set SPIKEBOARD_ALLOW_PUBLIC_WITHOUT_TOKEN=1 to "
                      "serve it open on purpose")


def _flag(raw: str | None) -> bool:
    return (raw or "").strip().lower() in ("1", "true", "yes", "on")


def _names(raw: str | None) -> tuple[str, ...]:
    return tuple(part.strip().lower() for part in (raw or "").split(",") if part.strip())


@dataclass(frozen=True)
class GuardOptions:
    """Limits of `RequestGuard`; `from_env` reads the SPIKEBOARD_* variables."""
    allowed_hosts: tuple[str, ...] = ()       # extra Host names; "*" accepts any
    allowed_origins: tuple[str, ...] = ()     # extra origins (scheme://host[:port]) allowed to mutate
    max_sessions: int = 64                    # dashboard sessions in all
    max_unconnected_per_client: int = 8       # page loads whose websocket has not (yet) connected
    unconnected_window_s: float = 10.0        # how long a page load counts as unconnected
    auth_failures_per_minute: int = 20        # wrong tokens (bearer or /login) per client

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "GuardOptions":
        environ = os.environ if environ is None else environ
        values: dict = {"allowed_hosts": _names(environ.get("SPIKEBOARD_ALLOWED_HOSTS")),
                        "allowed_origins": tuple(o.rstrip("/") for o in
                                                 _names(environ.get("SPIKEBOARD_ALLOWED_ORIGINS")))}
        for name, var in (("max_sessions", "SPIKEBOARD_MAX_SESSIONS"),
                          ("max_unconnected_per_client", "SPIKEBOARD_MAX_UNCONNECTED_PER_CLIENT"),
                          ("auth_failures_per_minute", "SPIKEBOARD_AUTH_FAILURES_PER_MINUTE")):
            if environ.get(var):
                values[name] = int(environ[var])
        return cls(**values)


def served_hosts(bind_host: str, options: GuardOptions) -> tuple[str, ...] | None:
    """Host names answered; None: any (a wildcard bind with no names given,
    where only a token can protect the server, and `check_bind` demands one)."""
    if "*" in options.allowed_hosts:
        return None
    if bind_host in WILDCARD_BINDS and not options.allowed_hosts:
        return None
    names = {*LOOPBACK_NAMES, *options.allowed_hosts}
    if bind_host not in WILDCARD_BINDS:
        names.add(bind_host.strip("[]").lower())
    return tuple(sorted(names))


def _host_name(host_header: str) -> str:
    """'example.org:8000' -> 'example.org'; '[::1]:8000' -> '::1'."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class SlidingCounter:
    """Events per key within a time window (rate limits, pending page loads)."""

    def __init__(self, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.window_s, self.clock = window_s, clock
        self._events: dict[str, deque[float]] = defaultdict(deque)

    def _trim(self, key: str) -> deque[float]:
        events, horizon = self._events[key], self.clock() - self.window_s
        while events and events[0] < horizon:
            events.popleft()
        if not events:
            self._events.pop(key, None)
            return deque()
        return events

    def count(self, key: str) -> int:
        return len(self._trim(key))

    def add(self, key: str) -> None:
        self._trim(key)
        self._events[key].append(self.clock())

    def pop_oldest(self, key: str) -> None:
        events = self._trim(key)
        if events:
            events.popleft()


@dataclass
class DashboardProbe:
    """Filled in by the dashboard's mount: its page paths and a live-session count."""
    pages: frozenset[str] = frozenset()
    live_sessions: Callable[[], int] = lambda: 0


@dataclass
class GuardState:
    """Per-process counters the guard and /login share."""
    auth_failures: SlidingCounter = field(default_factory=lambda: SlidingCounter(60.0))
    unconnected: SlidingCounter = field(default_factory=lambda: SlidingCounter(10.0))


def client_key(scope: Scope) -> str:
    client = scope.get("client")
    return client[0] if client else "?"


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return None


async def _send_json(send: Send, status: int, detail: str, headers: dict[str, str] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    raw += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


class RequestGuard:
    """ASGI middleware; see the module docstring."""

    def __init__(self, app: ASGIApp, *, bind_host: str, options: GuardOptions, state: GuardState,
                 dashboard: "DashboardProbe", token: str | None = None):
        self.app, self.options, self.state, self.token = app, options, state, token
        self.hosts = served_hosts(bind_host, options)
        self.dashboard = dashboard
        state.unconnected.window_s = options.unconnected_window_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if self.hosts is not None and (host is None or _host_name(host) not in self.hosts):
            if scope["type"] == "websocket":
                return await send({"type": "websocket.close", "code": 1008})
            return await _send_json(send, 400, f"Host {host!r} is not served here; allowed: {list(self.hosts)} "
                                               "(SPIKEBOARD_ALLOWED_HOSTS adds names)")
        path: str = scope.get("path", "")
        if scope["type"] == "websocket":
            return await self._websocket(scope, receive, send, host)
        method = scope.get("method", "GET")
        if method in MUTATING or path in COSTLY_READS:
            refusal = self._cross_site(scope, host)
            if refusal:
                return await _send_json(send, 403, refusal)
            if method in MUTATING and path.startswith("/api/") and not self._json_or_empty(scope):
                return await _send_json(send, 415, "request bodies must be JSON (Content-Type: application/json)")
        guarded = (path.startswith("/api/") and _header(scope, b"authorization") is not None) or \
            (path == "/login" and method == "POST")
        if self.token and guarded:
            if self.state.auth_failures.count(client_key(scope)) >= self.options.auth_failures_per_minute:
                return await _send_json(send, 429, "too many wrong tokens from this client; retry in a minute",
                                        {"Retry-After": "60"})
        if path.startswith(COMPONENT_PREFIX):
            return await self._component(scope, receive, send, path[len(COMPONENT_PREFIX):])
        if method == "GET" and path in self.dashboard.pages:
            refusal = self._session_refusal(scope)
            if refusal:
                return await _send_json(send, *refusal)
            self.state.unconnected.add(client_key(scope))
        await self.app(scope, receive, self._count_auth_failures(scope, send))

    # --- cross-site -------------------------------------------------------------------
    def _cross_site(self, scope: Scope, host: str | None) -> str | None:
        origin = _header(scope, b"origin")
        if origin is None:
            # no Origin: not a browser's cross-site request (browsers send one on
            # every cross-origin POST); Sec-Fetch-Site settles the rest
            if (_header(scope, b"sec-fetch-site") or "").lower() == "cross-site":
                return "cross-site request refused"
            return None
        origin = origin.rstrip("/").lower()
        parts = urlsplit(origin)
        if host is not None and parts.netloc == host.lower():
            return None
        if origin in self.options.allowed_origins:
            return None
        return (f"cross-site request from origin {origin!r} refused (the page must be served by this server, "
                "or its origin listed in SPIKEBOARD_ALLOWED_ORIGINS)")

    @staticmethod
    def _json_or_empty(scope: Scope) -> bool:
        content_type = (_header(scope, b"content-type") or "").split(";")[0].strip().lower()
        if not content_type:
            # without a content type only an empty body passes (a form always sends one)
            return (_header(scope, b"content-length") or "0") == "0" and \
                _header(scope, b"transfer-encoding") is None
        return content_type in JSON_TYPES or content_type in BINARY_TYPES or content_type.endswith("+json")

    # --- rate limit of wrong tokens ------------------------------------------------------
    def _count_auth_failures(self, scope: Scope, send: Send) -> Send:
        if not self.token:
            return send

        async def counting_send(message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 401:
                self.state.auth_failures.add(client_key(scope))
            await send(message)
        return counting_send

    # --- Panel's component resources -----------------------------------------------------
    async def _component(self, scope: Scope, receive: Receive, send: Send, rest: str) -> None:
        module = rest.split("/", 1)[0]
        # only Panel's own components, and only ones already imported: nothing in
        # the URL may make the server import a module
        if not (module == "panel" or module.startswith("panel.")) or module not in sys.modules \
                or rest.count("/") < 3:
            return await _send_json(send, 404, f"no component resource {rest!r}")
        from starlette.responses import FileResponse
        from tornado.web import HTTPError

        from panel.io.server import ComponentResourceHandler

        try:
            path = ComponentResourceHandler.parse_url_path(ComponentResourceHandler, rest)  # type: ignore[arg-type]
        except HTTPError as exc:
            return await _send_json(send, exc.status_code if 400 <= exc.status_code < 500 else 404,
                                    f"no component resource {rest!r}")
        except Exception:  # anything Panel's resolver trips over is a missing resource
            return await _send_json(send, 404, f"no component resource {rest!r}")
        if not path or not os.path.isfile(path):
            return await _send_json(send, 404, f"no component resource {rest!r}")
        await FileResponse(path)(scope, receive, send)

    # --- dashboard sessions and their websockets ---------------------------------------
    def _session_refusal(self, scope: Scope) -> tuple[int, str, dict[str, str]] | None:
        if self.dashboard.live_sessions() >= self.options.max_sessions:
            return 503, f"the dashboard holds its maximum of {self.options.max_sessions} sessions; retry shortly", \
                {"Retry-After": "10"}
        if self.state.unconnected.count(client_key(scope)) >= self.options.max_unconnected_per_client:
            return 429, (f"{self.options.max_unconnected_per_client} pages opened by this client have not "
                         "connected yet; retry shortly"), {"Retry-After": "10"}
        return None

    async def _websocket(self, scope: Scope, receive: Receive, send: Send, host: str | None) -> None:
        if scope.get("path", "").endswith("/ws"):
            if not _bokeh_token_parses(scope.get("subprotocols") or []):
                # closing before accepting answers the handshake with HTTP 403
                return await send({"type": "websocket.close", "code": 1008})
            self.state.unconnected.pop_oldest(client_key(scope))
        await self.app(scope, receive, send)


def _bokeh_token_parses(subprotocols: list[str]) -> bool:
    """Bokeh's handshake: subprotocols ["bokeh", <JWT-like token>]; the token's
    payload and session id must decode (their signature is Bokeh's to check)."""
    if len(subprotocols) != 2 or subprotocols[0] != "bokeh":
        return False
    from bokeh.util.token import get_session_id, get_token_payload

    try:
        get_token_payload(subprotocols[1])
        get_session_id(subprotocols[1])
    except Exception:  # malformed base64, JSON or structure
        return False
    return True
