"""Per-key quotas counted in Redis: concurrent uploads and streams, audio hours per UTC day.

Concurrency is a sorted set of leases per key and kind (``slots:<kind>:<key id>``), each
scored by its expiry. A holder renews its lease while it runs, so a replica that dies
frees its slots after at most one lease, and taking a slot is one atomic Lua script.
Audio seconds are summed per key and UTC day (``usage:<key id>:<YYYY-MM-DD>``, kept two
days).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Literal

from ethostral_serve.errors import EthostralError
from ethostral_serve.keys import ApiKey
from ethostral_serve.redis_store import RedisStore

SlotKind = Literal["uploads", "streams"]

# KEYS[1]: the slot set; ARGV: now (ms), lease expiry (ms), limit, lease id, ttl (ms).
_TAKE_SLOT = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {0, first[2]}
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[4])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return {1, ARGV[2]}
"""


class QuotaExceededError(EthostralError):
    """A key is over one of its limits; ``retry_after_s`` says when to try again."""

    status_code = 429

    def __init__(self, detail: str, retry_after_s: int) -> None:
        super().__init__(detail)
        self.retry_after_s = max(1, retry_after_s)


def seconds_to_utc_midnight(now: datetime | None = None) -> int:
    """Whole seconds until the next UTC day starts (at least 1)."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    tomorrow = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return max(1, math.ceil((tomorrow - now).total_seconds()))


class QuotaStore(RedisStore):
    """Takes and renews concurrency slots and counts audio, per API key."""

    def __init__(
        self, url: str, prefix: str = "ethostral:", lease_s: float = 60.0, timeout_s: float = 2.0
    ) -> None:
        super().__init__(url, timeout_s)
        self.prefix = prefix
        self.lease_s = lease_s

    def _slots_key(self, kind: SlotKind, key_id: str) -> str:
        return f"{self.prefix}slots:{kind}:{key_id}"

    def _usage_key(self, key_id: str, day: str | None = None) -> str:
        day = day or datetime.now(UTC).date().isoformat()
        return f"{self.prefix}usage:{key_id}:{day}"

    @contextlib.asynccontextmanager
    async def slot(self, key: ApiKey, kind: SlotKind) -> AsyncIterator[None]:
        """Hold one of the key's ``kind`` slots while the block runs; raises
        :class:`QuotaExceededError` when all are taken. Without a limit, holds nothing."""
        limit = (
            key.limits.max_concurrent_uploads
            if kind == "uploads"
            else key.limits.max_concurrent_streams
        )
        if limit is None:
            yield
            return
        name = self._slots_key(kind, key.id)
        lease = uuid.uuid4().hex
        await self._take(name, lease, limit, kind)
        renew = asyncio.create_task(self._renew(name, lease))
        try:
            yield
        finally:
            renew.cancel()
            try:
                # Not `await renew`: its CancelledError would hide a cancellation of
                # the holder itself arriving now.
                await asyncio.wait([renew])
            finally:
                with contextlib.suppress(EthostralError):  # the lease expires regardless
                    await asyncio.shield(self._call(self._client().zrem(name, lease)))

    async def _take(self, name: str, lease: str, limit: int, kind: SlotKind) -> None:
        now = int(time.time() * 1000)
        lease_ms = int(self.lease_s * 1000)
        taken, expiry = await self._call(
            self._client().eval(
                _TAKE_SLOT, 1, name, now, now + lease_ms, limit, lease, 2 * lease_ms
            )
        )
        if not int(taken):
            # The soonest a slot frees by itself; usually one is released long before.
            wait = max(1, min(math.ceil((float(expiry) - now) / 1000), 30))
            noun = "upload" if kind == "uploads" else "live stream"
            raise QuotaExceededError(
                f"this API key may run {limit} {noun}{'s' if limit != 1 else ''} at once; "
                "wait for one to finish",
                wait,
            )

    async def _renew(self, name: str, lease: str) -> None:
        """Push the lease's expiry forward every third of a lease while held."""
        while True:
            await asyncio.sleep(self.lease_s / 3)
            expiry = int((time.time() + self.lease_s) * 1000)
            with contextlib.suppress(EthostralError):  # Redis down: retried next time
                tx = self._client().pipeline(transaction=True)
                tx.zadd(name, {lease: expiry}, xx=True)
                tx.pexpire(name, int(2 * self.lease_s * 1000))
                await self._call(tx.execute())

    async def audio_used_s(self, key_id: str) -> float:
        """Seconds of audio the key sent today (UTC)."""
        raw = await self._call(self._client().get(self._usage_key(key_id)))
        return float(raw) if raw is not None else 0.0

    async def check_audio(self, key: ApiKey, pending_s: float = 0.0) -> None:
        """Raise :class:`QuotaExceededError` when the key's audio today, plus
        ``pending_s`` not yet counted, is over its daily hours."""
        hours = key.limits.audio_hours_per_day
        if hours is None:
            return
        used = await self.audio_used_s(key.id) + pending_s
        if used >= hours * 3600:
            raise QuotaExceededError(
                f"this API key's {hours:g} hours of audio for today (UTC) are used up "
                f"({used / 3600:.2f} h); the count restarts at midnight UTC",
                seconds_to_utc_midnight(),
            )

    async def add_audio(self, key_id: str, seconds: float) -> float:
        """Count ``seconds`` of audio for the key today; returns today's total."""
        if seconds <= 0:
            return await self.audio_used_s(key_id)
        name = self._usage_key(key_id)
        tx = self._client().pipeline(transaction=True)
        tx.incrbyfloat(name, round(seconds, 3))
        tx.expire(name, 2 * 86400)
        total, _ = await self._call(tx.execute())
        return float(total)
