"""The web app: ``index.html`` at ``GET /`` and its content-hashed assets under ``/assets/``.

The app's source is in ``web/`` (TypeScript, built with Vite); the build output is kept in
``ethostral_serve/web/static`` so serving it needs no Node. The page and its assets are
open even when API keys are required (:data:`OPEN_PATHS`, :data:`OPEN_PREFIXES`): the page
asks for a key and sends it with each API call. The page uses hash routes
(``#/sessions/<id>``), so nothing here shadows an API path.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from fastapi import FastAPI
from fastapi.responses import FileResponse, Response
from starlette.staticfiles import StaticFiles

log = logging.getLogger("ethostral_serve.api.web")

STATIC_DIR = Path(__file__).resolve().parents[1] / "web" / "static"
ASSETS_PATH = "/assets"

OPEN_PATHS = ("/",)  # served without an API key
OPEN_PREFIXES = (f"{ASSETS_PATH}/",)

# The page loads scripts and styles from its own origin only; it plays local files and
# downloads through blob: URLs and talks to the API (REST and the live WebSocket) on its
# own origin. Inline styles are allowed: uPlot and wavesurfer.js set them.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; media-src 'self' blob:; connect-src 'self' blob:; "
    "object-src 'none'; base-uri 'self'; form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Cache-Control": "no-cache",  # always revalidated: it names the current assets
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
ASSET_CACHE_CONTROL = "public, max-age=31536000, immutable"  # names carry a content hash


class _Assets(StaticFiles):
    """Static files with a year-long, immutable cache lifetime."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = ASSET_CACHE_CONTROL
        response.headers["X-Content-Type-Options"] = "nosniff"
        return response


def is_open_path(path: str) -> bool:
    """Whether ``path`` is the web page or one of its assets (no API key needed)."""
    return path in OPEN_PATHS or (path.startswith(OPEN_PREFIXES) and ".." not in path)


def install_web_app(app: FastAPI, static_dir: Path = STATIC_DIR) -> bool:
    """Serve the built web app from ``static_dir`` on ``app``; False (and a warning) when
    it is not there (a checkout whose ``web/`` was never built)."""
    index = static_dir / "index.html"
    assets = static_dir / "assets"
    if not index.is_file() or not assets.is_dir():
        log.warning("web app not served: %s is missing (run web/build.sh)", index)
        return False

    @app.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
    async def web_app() -> Response:
        # read per request: a rebuild (web/build.sh) is served without a restart
        return FileResponse(index, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    app.mount(ASSETS_PATH, _Assets(directory=os.fspath(assets)), name="web-assets")
    return True
