"""Counts uploads (``POST`` to the upload paths) by outcome and status, whatever
answered them.

A pure ASGI middleware, outermost, so it also sees the 401 of the key check and the 413
of the body limit. A client that leaves mid-upload counts as ``cancelled`` (status 499);
an exception that escapes every handler (an opaque 500) as ``server_error``. An upload
queued as a job (202) is not counted here: the job is, as kind ``job``, when it ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ethostral_serve.metrics import CANCELLED_STATUS, Metrics, http_outcome

QUEUED_STATUS = 202  # an upload taken as a job: counted when the job ends


class UploadMetricsMiddleware:
    """Records each ``POST`` to one of ``paths`` into ``metrics`` as kind ``upload``,
    except one queued as a job (202)."""

    def __init__(self, app: ASGIApp, metrics: Metrics, paths: Iterable[str]) -> None:
        self.app = app
        self.metrics = metrics
        self.paths = frozenset(p.rstrip("/") for p in paths)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not _is_upload(scope, self.paths):
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        except asyncio.CancelledError:
            self._record(CANCELLED_STATUS)
            raise
        except Exception:
            self._record(status[0] if status else 500)
            raise
        self._record(status[0] if status else CANCELLED_STATUS)

    def _record(self, status: int) -> None:
        if status != QUEUED_STATUS:
            self.metrics.request("upload", http_outcome(status), status)


def _is_upload(scope: Scope, paths: frozenset[str]) -> bool:
    if scope["type"] != "http" or scope.get("method") != "POST":
        return False
    path: str = scope.get("path", "")
    root: Any = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path.rstrip("/") in paths
