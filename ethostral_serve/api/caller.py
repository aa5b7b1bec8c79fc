"""The request's caller as a FastAPI dependency (``CallerDep``), for every route that
stores or reads sessions."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from ethostral_serve.api.auth import Access, Caller, http_credentials


async def current_caller(request: Request) -> Caller:
    """The request's caller: authenticated by :class:`AuthMiddleware` when keys are on,
    else by the app's :class:`Access` (anonymous)."""
    caller = getattr(request.state, "caller", None)
    if isinstance(caller, Caller):
        return caller
    access: Access = request.app.state.access
    return await access.authenticate(http_credentials(request.headers))


CallerDep = Annotated[Caller, Depends(current_caller)]
