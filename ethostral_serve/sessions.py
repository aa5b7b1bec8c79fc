"""Stored sessions: :class:`SessionStore` keeps ``Session`` JSON in Redis (``redis.asyncio``).

Every failure to reach Redis becomes :class:`~ethostral_serve.errors.StoreUnavailableError`
(503); an unknown id is :class:`~ethostral_serve.errors.SessionNotFoundError` (404); a stored
value that is not a session is :class:`CorruptSessionError` (500, left untouched in Redis).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError

from ethostral_serve.errors import (
    CorruptSessionError,
    SessionNotFoundError,
    StoreUnavailableError,
)
from ethostral_serve.schema import Session

T = TypeVar("T")


class SessionStore:
    """Sessions as JSON strings in Redis under ``key_prefix + id``.

    One connection pool per asyncio event loop, created on first use in that loop, so a
    store built outside any loop (a Ray Serve replica's ``__init__``) works from the loop
    that serves requests, and from several loops (``asyncio.run`` in tests, threads).
    """

    def __init__(
        self,
        url: str,
        key_prefix: str = "ethostral:session:",
        ttl_s: int | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        """``url``: ``redis://``, ``rediss://`` or ``unix://``; ``ttl_s``: expiry, None: never."""
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._clients: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], aioredis.Redis]] = {}
        self._lock = threading.Lock()

    def key(self, session_id: str) -> str:
        """The Redis key a session is stored under."""
        return f"{self.key_prefix}{session_id}"

    async def save(self, session: Session) -> None:
        """Store ``session`` under its id (replacing that id's earlier version)."""
        client = self._client()
        await self._call(client.set(self.key(session.id), session.model_dump_json(), ex=self.ttl_s))

    async def get(self, session_id: str) -> Session:
        """The stored session with this id; raises ``SessionNotFoundError``."""
        client = self._client()
        raw = await self._call(client.get(self.key(session_id)), session_id)
        if raw is None:
            raise SessionNotFoundError(f"no session with id {session_id!r}")
        try:
            session = Session.model_validate_json(raw)
        except ValidationError as e:
            raise CorruptSessionError(
                f"stored session {session_id!r} is not valid session JSON "
                f"({e.error_count()} error(s), first: {e.errors()[0]['msg']})"
            ) from None
        if session.id != session_id:
            raise CorruptSessionError(
                f"stored session {session_id!r} holds a session with id {session.id!r}"
            )
        return session

    async def delete(self, session_id: str) -> None:
        """Remove the session with this id; raises ``SessionNotFoundError``."""
        client = self._client()
        removed = await self._call(client.delete(self.key(session_id)), session_id)
        if not removed:
            raise SessionNotFoundError(f"no session with id {session_id!r}")

    async def ping(self) -> None:
        """Return when Redis answers; raises ``StoreUnavailableError``."""
        client = self._client()
        await self._call(client.ping())

    async def aclose(self) -> None:
        """Close this loop's connections and forget every other loop's pool."""
        loop = asyncio.get_running_loop()
        with self._lock:
            clients, self._clients = self._clients, {}
        for loop_ref, client in clients.values():
            other = loop_ref()
            if other is loop:
                await client.aclose(close_connection_pool=True)
            elif other is not None and other.is_running() and not other.is_closed():
                asyncio.run_coroutine_threadsafe(client.aclose(close_connection_pool=True), other)

    def _client(self) -> aioredis.Redis:
        """This event loop's client, created on first use; drops those of closed loops."""
        loop = asyncio.get_running_loop()
        with self._lock:
            entry = self._clients.get(id(loop))
            if entry is not None and entry[0]() is loop:
                return entry[1]
            for key, (loop_ref, _) in list(self._clients.items()):
                other = loop_ref()
                if other is None or other.is_closed():
                    del self._clients[key]
            client = aioredis.Redis.from_url(
                self.url,
                socket_connect_timeout=self.timeout_s,
                socket_timeout=self.timeout_s,
                # One immediate retry on a dropped connection (a restarted server leaves
                # dead sockets in the pool); none on timeouts, so a call fails within
                # about timeout_s instead of redis-py's default backoff.
                retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)),
            )
            self._clients[id(loop)] = (weakref.ref(loop), client)
            return client

    async def _call(self, op: Awaitable[T], session_id: str | None = None) -> T:
        """Await a Redis command, turning transport and server failures into domain errors."""
        try:
            return await op
        except ResponseError as e:
            if session_id is not None and str(e).startswith("WRONGTYPE"):
                raise CorruptSessionError(
                    f"stored session {session_id!r} is not a string value in Redis"
                ) from None
            raise StoreUnavailableError(f"session store unavailable: {_describe(e)}") from e
        except (RedisError, OSError) as e:  # asyncio/builtin TimeoutError is an OSError
            raise StoreUnavailableError(f"session store unavailable: {_describe(e)}") from e


def _describe(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
