"""What every Redis-backed store shares: one client per event loop and one error mapping.

Every failure to reach Redis becomes :class:`~ethostral_serve.errors.StoreUnavailableError`
(503), so callers see domain errors, never redis-py's; each is counted in the process's
metrics (``redis_errors``, by store and error type).
"""

from __future__ import annotations

import asyncio
import threading
import weakref
from collections.abc import Awaitable
from typing import TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, WatchError

from ethostral_serve import metrics
from ethostral_serve.errors import StoreUnavailableError

T = TypeVar("T")


class RedisStore:
    """A Redis connection usable from any event loop.

    One connection pool per asyncio event loop, created on first use in that loop, so a
    store built outside any loop (a Ray Serve replica's ``__init__``) works from the loop
    that serves requests, and from several loops (``asyncio.run`` in tests, threads).
    """

    what = "Redis"  # named in errors: "<what> unavailable: ..."

    def __init__(self, url: str, timeout_s: float = 2.0) -> None:
        """``url``: ``redis://``, ``rediss://`` or ``unix://``; ``timeout_s``: per command."""
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be positive, got {timeout_s}")
        self.url = url
        self.timeout_s = timeout_s
        self._clients: dict[int, tuple[weakref.ref[asyncio.AbstractEventLoop], aioredis.Redis]] = {}
        self._lock = threading.Lock()

    async def ping(self) -> None:
        """Return when Redis answers; raises ``StoreUnavailableError``."""
        await self._call(self._client().ping())

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

    async def _call(self, op: Awaitable[T]) -> T:
        """Await a Redis command, turning transport and server failures into a 503
        (``WatchError``, a ``WATCH``ed key that changed, passes through)."""
        try:
            return await op
        except WatchError:  # a WATCHed key changed: a conflict for the caller, not an outage
            raise
        except (RedisError, OSError) as e:  # asyncio/builtin TimeoutError is an OSError
            metrics.installed().redis_error(type(self).__name__, type(e).__name__)
            raise StoreUnavailableError(f"{self.what} unavailable: {describe(e)}") from e


def describe(e: BaseException) -> str:
    """``Type: message`` of an exception, for error details."""
    text = str(e).strip()
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
