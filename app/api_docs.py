"""`/docs` that works offline: FastAPI's self-hosting recipe with Swagger UI's files
from the swagger-ui-py package instead of a CDN (a lab's GPU box is often offline).

ReDoc has no maintained Python package of its assets, so it is not served.
"""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

ASSETS = "/docs-assets"


def swagger_ui_dir() -> Path:
    """swagger-ui-py's copy of Swagger UI's dist folder (found without importing the
    package, whose handlers this app does not use)."""
    spec = find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed (pip install -e . installs it)")
    return Path(spec.origin).parent / "static"


def install_docs(app: FastAPI) -> None:
    """Serve /docs from local files; create the app with docs_url=None, redoc_url=None."""
    app.mount(ASSETS, StaticFiles(directory=swagger_ui_dir()), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(openapi_url=app.openapi_url or "/openapi.json", title=f"{app.title} API",
                                   swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")
