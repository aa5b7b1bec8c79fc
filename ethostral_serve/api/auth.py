"""Who is calling: API keys from request headers, and the quotas of the caller's key.

REST sends ``Authorization: Bearer <key>`` (``Token <key>`` is accepted too, as Deepgram
clients send it). A WebSocket may send the same header or, from a browser that cannot set
headers, the subprotocols ``token, <key>`` (or ``bearer, <key>``); the server then accepts
the connection with the subprotocol ``token`` (or ``bearer``), as browsers require.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ethostral_serve.api.web import is_open_path
from ethostral_serve.errors import AuthenticationError, EthostralError
from ethostral_serve.keys import ApiKey, KeyStore
from ethostral_serve.quotas import QuotaStore, SlotKind
from ethostral_serve.settings import Settings

SCHEMES = ("bearer", "token")
AUTH_CHALLENGE = 'Bearer realm="ethostral"'  # the WWW-Authenticate header of a 401
CREATE_HINT = "create one on the server with `ethostral keys create --name NAME`"
RETRY_AFTER_S = 5  # the Retry-After of a 503


@dataclass(frozen=True)
class Caller:
    """The API key a request came with; ``key`` None when auth is off."""

    key: ApiKey | None = None

    @property
    def owner(self) -> str | None:
        """The key id sessions are stored under (None: no key, auth off)."""
        return self.key.id if self.key is not None else None


@dataclass(frozen=True)
class Credentials:
    """A key taken from a request, and the WebSocket subprotocol to accept with."""

    secret: str | None
    subprotocol: str | None = None


def http_credentials(headers: Mapping[str, str]) -> Credentials:
    """The key in ``Authorization: Bearer <key>`` (or ``Token <key>``)."""
    value = headers.get("authorization", "").strip()
    scheme, _, secret = value.partition(" ")
    if scheme.lower() in SCHEMES and secret.strip():
        return Credentials(secret.strip())
    return Credentials(None)


def websocket_credentials(headers: Mapping[str, str]) -> Credentials:
    """The key in the ``Authorization`` header, else in ``Sec-WebSocket-Protocol:
    token, <key>`` (or ``bearer, <key>``)."""
    from_header = http_credentials(headers)
    if from_header.secret is not None:
        return from_header
    offered = [p.strip() for p in headers.get("sec-websocket-protocol", "").split(",")]
    if len(offered) >= 2 and offered[0].lower() in SCHEMES and offered[1]:
        return Credentials(offered[1], subprotocol=offered[0])
    return Credentials(None)


class Access:
    """Authentication and per-key quotas; with ``keys`` None, everyone is let in."""

    def __init__(self, keys: KeyStore | None = None, quotas: QuotaStore | None = None) -> None:
        if (keys is None) != (quotas is None):
            raise ValueError("keys and quotas go together")
        self.keys = keys
        self.quotas = quotas

    @classmethod
    def from_settings(cls, redis_url: str, settings: Settings) -> Access:
        """Keys and quotas in this Redis when ``auth.required``; else open access."""
        a = settings.auth
        if not a.required:
            return cls()
        timeout = settings.redis.timeout_s
        return cls(
            KeyStore(redis_url, prefix=a.key_prefix, timeout_s=timeout),
            QuotaStore(redis_url, prefix=a.key_prefix, lease_s=a.slot_lease_s, timeout_s=timeout),
        )

    @property
    def required(self) -> bool:
        """Whether requests need a key."""
        return self.keys is not None

    async def authenticate(self, credentials: Credentials) -> Caller:
        """The caller; raises :class:`AuthenticationError` (401) without a valid key."""
        if self.keys is None:
            return Caller()
        if credentials.secret is None:
            hint = "" if await self.keys.any() else f"; no key exists yet: {CREATE_HINT}"
            raise AuthenticationError(
                "missing API key: send the header `Authorization: Bearer <key>`" + hint
            )
        key = await self.keys.authenticate(credentials.secret)
        if key is None:
            raise AuthenticationError("unknown or revoked API key")
        return Caller(key)

    async def caller_of(self, owner: str | None) -> Caller | None:
        """The caller behind a key id as the key is now (a job runs long after it was
        made); None when that key was revoked. With auth off, the anonymous caller."""
        if self.keys is None or not owner:
            return Caller()
        key = await self.keys.get(owner)
        return Caller(key) if key is not None else None

    @contextlib.asynccontextmanager
    async def slot(self, caller: Caller, kind: SlotKind) -> AsyncIterator[None]:
        """Hold one of the caller's concurrent ``kind`` slots (429 when all are taken)."""
        if self.quotas is None or caller.key is None:
            yield
            return
        async with self.quotas.slot(caller.key, kind):
            yield

    async def check_audio(self, caller: Caller, pending_s: float = 0.0) -> None:
        """429 when the caller's audio today (plus ``pending_s``) is over its hours."""
        if self.quotas is not None and caller.key is not None:
            await self.quotas.check_audio(caller.key, pending_s)

    async def add_audio(self, caller: Caller, seconds: float) -> None:
        """Count ``seconds`` of the caller's audio for today."""
        if self.quotas is not None and caller.key is not None:
            await self.quotas.add_audio(caller.key.id, seconds)

    async def aclose(self) -> None:
        """Close the stores' connections on this loop."""
        for store in (self.keys, self.quotas):
            if store is not None:
                await store.aclose()


OPEN_PATHS = ("/healthz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json")


class AuthMiddleware:
    """Authenticates every HTTP request but the open paths before its body is read, so a
    caller without a valid key cannot make the server receive an upload (401 at once).

    The caller is left in ``scope["state"]["caller"]`` for the routes (``request.state``).
    """

    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        # the web page and its assets are open too: the page asks for the key itself
        if scope["type"] != "http" or path in OPEN_PATHS or is_open_path(path):
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            caller = await self.access.authenticate(http_credentials(headers))
        except EthostralError as exc:  # 401, or 503 when the key store is down
            extra = {"WWW-Authenticate": AUTH_CHALLENGE} if exc.status_code == 401 else {}
            if exc.status_code == 503:
                extra = {"Retry-After": str(RETRY_AFTER_S)}
            response = JSONResponse(
                {"detail": exc.detail},
                status_code=exc.status_code,
                # the unread body stays unread: the connection is not reused
                headers={**extra, "Connection": "close"},
            )
            await response(scope, receive, send)
            return
        scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)
