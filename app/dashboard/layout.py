"""The frame every page shares: header with navigation, a status line, the body."""

from __future__ import annotations

import html

import panel as pn

PAGES = (("/", "Runs"), ("/compare", "Compare"), ("/coupling", "Coupling sweep"), ("/whatif", "What-if"),
         ("/force", "FORCE"), ("/studies", "Studies"))
STYLESHEET = "/assets/spikeboard.css"


def header(active: str) -> pn.pane.HTML:
    links = "".join(f'<a href="{path}" class="{"active" if path == active else ""}">{html.escape(label)}</a>'
                    for path, label in PAGES)
    return pn.pane.HTML(
        f'<header class="sb-header"><a class="brand" href="/"><img src="/assets/logo.svg" alt="">spikeboard</a>'
        f'<nav>{links}</nav><a class="api" href="/docs">API</a></header>',
        sizing_mode="stretch_width", margin=0, stylesheets=[STYLESHEET])


def page(title: str, active: str, *body, status: pn.pane.Alert | None = None) -> pn.Column:
    """A full page: header, title, optional status line, then the body."""
    parts = [header(active), pn.pane.HTML(f"<h1>{html.escape(title)}</h1>", margin=(10, 20, 0, 20),
                                          stylesheets=[STYLESHEET])]
    if status is not None:
        parts.append(status)
    parts.extend(body)
    return pn.Column(*parts, sizing_mode="stretch_width", stylesheets=[STYLESHEET], css_classes=["sb-page"])


def status_line() -> pn.pane.Alert:
    """Where a page reports what an action did (or why it could not)."""
    return pn.pane.Alert("", alert_type="info", visible=False, margin=(0, 20), sizing_mode="stretch_width")


def say(status: pn.pane.Alert, message: str, kind: str = "success") -> None:
    status.object, status.alert_type, status.visible = message, kind, True


def section(title: str, *items, **layout) -> pn.Column:
    """A titled panel. For a fixed-width one pass width=W, sizing_mode=None (its height
    follows its content); sizing_mode="fixed" would also need a height (Bokeh W-1005)."""
    options = {"sizing_mode": "stretch_width", "margin": (10, 15), **layout}
    return pn.Column(pn.pane.HTML(f"<h2>{html.escape(title)}</h2>", margin=(5, 10, 0, 10)), *items,
                     css_classes=["sb-section"], stylesheets=[STYLESHEET], **options)


def query_param(name: str) -> str | None:
    """A query-string argument of the page's URL (?id=...)."""
    values = pn.state.session_args.get(name) if pn.state.session_args else None
    return values[0].decode() if values else None
