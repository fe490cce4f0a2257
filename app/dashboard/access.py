"""The API token guards the dashboard too.

Pages act through the service layer directly, so the bearer check of the REST
routers never sees them. With a token configured, every dashboard request (the
pages and their websockets) needs a cookie holding the token; `/login` sets it.
Without a token (the loopback default) nothing changes. The cookie holds a
digest of the token, hex: cookie-safe whatever the token's characters, and not
usable as the API's bearer token if it leaks.
"""

from __future__ import annotations

import hashlib
import html
import secrets
from urllib.parse import parse_qs, quote

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.types import ASGIApp, Receive, Scope, Send

COOKIE = "spikeboard_token"
# the API checks its own bearer token; assets and BokehJS hold nothing private
OPEN_PREFIXES = ("/api", "/docs", "/redoc", "/openapi.json", "/assets", "/static", "/favicon.ico", "/login",
                 "/logout")
COOKIE_MAX_AGE_S = 7 * 24 * 3600  # a week; /logout ends it sooner


def served_over_https(request: Request) -> bool:
    """The request reached us over HTTPS, directly or through a proxy that says
    so (uvicorn's --proxy-headers / forwarded-allow-ips decide whom to believe)."""
    return request.url.scheme in ("https", "wss") or \
        request.headers.get("x-forwarded-proto", "").split(",")[0].strip() == "https"


def cookie_value(token: str) -> str:
    return hashlib.sha256(b"spikeboard-dashboard:" + token.encode()).hexdigest()


def _cookie(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"cookie":
            for part in value.decode("latin-1").split(";"):
                key, _, token = part.strip().partition("=")
                if key == COOKIE:
                    return token
    return None


class TokenGate:
    """ASGI middleware: dashboard pages and websockets need the token cookie."""

    def __init__(self, app: ASGIApp, token: str):
        self.app, self.expected = app, cookie_value(token).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] not in ("http", "websocket") or path.startswith(OPEN_PREFIXES):
            return await self.app(scope, receive, send)
        cookie = _cookie(scope)
        if cookie is not None and secrets.compare_digest(cookie.encode(), self.expected):
            return await self.app(scope, receive, send)
        if scope["type"] == "websocket":
            return await send({"type": "websocket.close", "code": 1008})
        query = scope.get("query_string", b"").decode("latin-1")
        target = path + (f"?{query}" if query else "")
        response = RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)
        await response(scope, receive, send)


def _login_page(next_path: str, failed: bool) -> str:
    note = '<p class="field-error">That token is not right.</p>' if failed else ""
    return (f'<!doctype html><html><head><title>spikeboard · sign in</title>'
            f'<link rel="stylesheet" href="/assets/spikeboard.css"></head><body class="sb-page">'
            f'<header class="sb-header"><span class="brand"><img src="/assets/logo.svg" alt="">spikeboard</span>'
            f'</header><main style="padding: 30px"><h1>Sign in</h1>{note}'
            f'<form method="post" action="/login"><input type="hidden" name="next" value="{html.escape(next_path)}">'
            f'<label>API token <input type="password" name="token" autofocus></label> '
            f'<button type="submit">Open the dashboard</button></form></main></body></html>')


def install(app: FastAPI, token: str) -> None:
    app.add_middleware(TokenGate, token=token)

    @app.get("/login", include_in_schema=False)
    def login_form(next: str = "/") -> HTMLResponse:
        return HTMLResponse(_login_page(next, failed=False))

    @app.post("/login", include_in_schema=False, response_model=None)
    async def login(request: Request) -> HTMLResponse | RedirectResponse:
        # a plain urlencoded form: parsed here rather than adding python-multipart
        fields = parse_qs((await request.body()).decode("utf-8", "replace"))
        token, next = fields.get("token", [""])[0], fields.get("next", ["/"])[0]
        if not secrets.compare_digest(token.encode(), app_token):
            return HTMLResponse(_login_page(next, failed=True), status_code=401)
        target = next if next.startswith("/") and not next.startswith("//") else "/"
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(COOKIE, cookie_value(token), max_age=COOKIE_MAX_AGE_S, httponly=True,
                            samesite="strict", secure=served_over_https(request))
        return response

    @app.post("/logout", include_in_schema=False)
    def logout(request: Request) -> RedirectResponse:
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, httponly=True, samesite="strict", secure=served_over_https(request))
        return response

    app_token = token.encode()
