"""Asynchronous uploads as jobs: their state, queue and leases in Redis.

A job is a hash ``job:<id>`` (under ``prefix``, default ``ethostral:``) whose id is also
the id of the session it makes. It moves queued → running → done | failed, or to
cancelled from either of the first two. Around it:

- ``jobs:queue:<host>``: queued job ids scored by the time they may start (ms). Each
  spool (a directory of uploads) has its host name, and replicas claim only jobs whose
  audio they can read;
- ``jobs:running``: running job ids scored by the expiry of their lease (ms). A replica
  renews the leases of its jobs; one whose lease expired (its replica died) is queued
  again by any replica, up to ``max_attempts`` runs;
- ``jobs:open`` and ``jobs:open:<key id>``: jobs queued or running, to bound them;
- ``job:<id>:events``: a Redis stream of the job's states, read by ``GET
  /sessions/{id}/events``.

Every transition is one Lua script or one ``WATCH``/``MULTI`` transaction, so a job
finishes at most once: only the holder of its current lease can mark it done, and the
session is stored in the same transaction.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import WatchError

from ethostral_serve.errors import EthostralError, InvalidRequestError
from ethostral_serve.keys import ApiKey
from ethostral_serve.quotas import QuotaExceededError
from ethostral_serve.redis_store import RedisStore
from ethostral_serve.schema import Job, JobStatus, now_iso

EVENTS_KEPT = 200  # newest events of one job kept in its stream
TOMBSTONE_S = 3600  # a cancelled job's state is kept this long, so its run sees it

# KEYS: job hash, queue, open, open of the key. ARGV: max open, max open per key, score,
# then field, value pairs of the hash.
_ENQUEUE = """
if redis.call('SCARD', KEYS[3]) >= tonumber(ARGV[1]) then return 'all' end
if redis.call('SCARD', KEYS[4]) >= tonumber(ARGV[2]) then return 'key' end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
redis.call('ZADD', KEYS[2], ARGV[3], KEYS[1]:match('([^:]+)$'))
redis.call('SADD', KEYS[3], KEYS[1]:match('([^:]+)$'))
redis.call('SADD', KEYS[4], KEYS[1]:match('([^:]+)$'))
return 'ok'
"""

# KEYS: queue, running. ARGV: now (ms), lease expiry (ms), lease id, job key prefix, now iso.
# Returns the claimed job id, or false.
_CLAIM = """
while true do
  local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, 1)
  if #ids == 0 then return false end
  local id = ids[1]
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[4] .. id
  if redis.call('HGET', job, 'status') == 'queued' then
    redis.call('HSET', job, 'status', 'running', 'lease', ARGV[3], 'stage', '',
      'progress', '0', 'updated_at', ARGV[5])
    redis.call('HINCRBY', job, 'attempts', 1)
    redis.call('ZADD', KEYS[2], ARGV[2], id)
    return id
  end
end
"""

# KEYS: job hash, running. ARGV: lease id, new expiry (ms). Returns the job's status when
# the lease is still ours ('running' or 'cancelled'), else 'lost'.
_RENEW = """
local status = redis.call('HGET', KEYS[1], 'status')
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 'lost' end
if status == 'running' then
  redis.call('ZADD', KEYS[2], 'XX', ARGV[2], KEYS[1]:match('([^:]+)$'))
end
return status
"""

# KEYS: job hash. ARGV: lease id, stage, progress, now iso. Records a running job's
# progress; a report that arrives late (lower than what is stored) leaves it as it is.
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
if tonumber(ARGV[3]) < (tonumber(redis.call('HGET', KEYS[1], 'progress')) or 0) then return 0 end
redis.call('HSET', KEYS[1], 'stage', ARGV[2], 'progress', ARGV[3], 'updated_at', ARGV[4])
return 1
"""

# KEYS: job hash, running, queue. ARGV: lease id, start at (ms), now iso, refund (1: this
# run does not count as an attempt). Puts our running job back in the queue.
_REQUEUE = """
if redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[1], 'status') ~= 'running' then return 0 end
local id = KEYS[1]:match('([^:]+)$')
redis.call('HSET', KEYS[1], 'status', 'queued', 'lease', '', 'stage', '', 'progress', '0',
  'updated_at', ARGV[3])
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[1], 'attempts', -1) end
redis.call('ZREM', KEYS[2], id)
redis.call('ZADD', KEYS[3], ARGV[2], id)
return 1
"""

# KEYS: job hash, running, open. ARGV: lease id ('' : any), keep (s), now iso, detail,
# status code, open-of-key prefix. Marks a running job failed.
_FAIL = """
if ARGV[1] ~= '' and redis.call('HGET', KEYS[1], 'lease') ~= ARGV[1] then return 0 end
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'running' and status ~= 'queued' then return 0 end
local id = KEYS[1]:match('([^:]+)$')
redis.call('HSET', KEYS[1], 'status', 'failed', 'lease', '', 'detail', ARGV[4],
  'status_code', ARGV[5], 'updated_at', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
redis.call('ZREM', KEYS[2], id)
redis.call('SREM', KEYS[3], id)
redis.call('SREM', ARGV[6] .. redis.call('HGET', KEYS[1], 'owner'), id)
return 1
"""

# KEYS: job hash, running, open. ARGV: tombstone (s), now iso, open-of-key prefix, queue
# prefix. Cancels a queued or running job; returns its status before.
_CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'running' then return status or false end
local id = KEYS[1]:match('([^:]+)$')
redis.call('HSET', KEYS[1], 'status', 'cancelled', 'updated_at', ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('ZREM', ARGV[4] .. redis.call('HGET', KEYS[1], 'host'), id)
redis.call('ZREM', KEYS[2], id)
redis.call('SREM', KEYS[3], id)
redis.call('SREM', ARGV[3] .. redis.call('HGET', KEYS[1], 'owner'), id)
return status
"""

# KEYS: running. ARGV: now (ms), job key prefix, max attempts, now iso, queue prefix, keep
# (s), open key, open-of-key prefix. Jobs whose lease expired go back to their queue, or
# fail after their last attempt. Returns {requeued ids, failed ids}.
_REAP = """
local requeued, failed = {}, {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])) do
  redis.call('ZREM', KEYS[1], id)
  local job = ARGV[2] .. id
  if redis.call('HGET', job, 'status') == 'running' then
    if tonumber(redis.call('HGET', job, 'attempts') or '0') >= tonumber(ARGV[3]) then
      redis.call('HSET', job, 'status', 'failed', 'lease', '', 'status_code', '500',
        'detail', 'the job was interrupted on each of its ' .. ARGV[3] ..
        ' attempts (the replica running it stopped)', 'updated_at', ARGV[4])
      redis.call('EXPIRE', job, ARGV[6])
      redis.call('SREM', ARGV[7], id)
      redis.call('SREM', ARGV[8] .. redis.call('HGET', job, 'owner'), id)
      table.insert(failed, id)
    else
      redis.call('HSET', job, 'status', 'queued', 'lease', '', 'stage', '', 'progress', '0',
        'updated_at', ARGV[4])
      redis.call('ZADD', ARGV[5] .. redis.call('HGET', job, 'host'), ARGV[1], id)
      table.insert(requeued, id)
    end
  end
end
return {requeued, failed}
"""


class JobsFullError(QuotaExceededError):
    """Too many jobs are queued or running (for the caller's key, or in all)."""


class JobNotFoundError(EthostralError):
    """No job with this id (or not the caller's)."""

    status_code = 404


@dataclass(frozen=True)
class JobRecord:
    """A job as stored: its public state plus what running it needs."""

    job: Job
    owner: str  # API key id; "" when auth was off
    key: ApiKey | None  # the key as it was when the job was made
    options: dict[str, Any]  # TranscribeOptions fields, speakers as a dict
    spool: str  # path of the spooled upload
    host: str  # the spool's name
    callback_url: str | None
    lease: str


@dataclass(frozen=True)
class Claim:
    """A job this replica runs, under its lease."""

    record: JobRecord
    lease: str


class JobStore(RedisStore):
    """Creates, claims, renews, finishes and cancels jobs in Redis."""

    what = "job store"

    def __init__(
        self,
        url: str,
        prefix: str = "ethostral:",
        lease_s: float = 30.0,
        keep_s: int = 7 * 86400,
        max_attempts: int = 3,
        timeout_s: float = 2.0,
    ) -> None:
        super().__init__(url, timeout_s)
        self.prefix = prefix
        self.lease_s = lease_s
        self.keep_s = keep_s
        self.max_attempts = max_attempts

    # keys
    def job_key(self, job_id: str) -> str:
        """The hash holding a job."""
        return f"{self.prefix}job:{job_id}"

    def events_key(self, job_id: str) -> str:
        """The stream of a job's states."""
        return f"{self.prefix}job:{job_id}:events"

    def queue_key(self, host: str) -> str:
        """Queued jobs whose audio is in ``host``'s spool."""
        return f"{self.prefix}jobs:queue:{host}"

    @property
    def running_key(self) -> str:
        """Running jobs by lease expiry."""
        return f"{self.prefix}jobs:running"

    @property
    def open_key(self) -> str:
        """Jobs queued or running."""
        return f"{self.prefix}jobs:open"

    @property
    def _open_of_prefix(self) -> str:
        return f"{self.prefix}jobs:open:"

    def open_key_of(self, owner: str) -> str:
        """Jobs queued or running of one key ("" : made with auth off)."""
        return self._open_of_prefix + owner

    # creating
    async def create(
        self,
        job_id: str,
        *,
        filename: str,
        owner: str | None,
        key: ApiKey | None,
        options: dict[str, Any],
        spool: str,
        host: str,
        callback_url: str | None,
        max_open: int,
        max_open_per_key: int,
    ) -> Job:
        """Queue a new job; raises :class:`JobsFullError` (429) past the bounds."""
        now = now_iso()
        fields: dict[str, str] = {
            "id": job_id,
            "status": "queued",
            "stage": "",
            "progress": "0",
            "detail": "",
            "status_code": "",
            "filename": filename,
            "created_at": now,
            "updated_at": now,
            "attempts": "0",
            "owner": owner or "",
            "key": key.model_dump_json() if key is not None else "",
            "options": json.dumps(options),
            "spool": spool,
            "host": host,
            "callback_url": callback_url or "",
            "lease": "",
        }
        args: list[Any] = [max_open, max_open_per_key, _now_ms()]
        for name, value in fields.items():
            args += [name, value]
        keys = [
            self.job_key(job_id),
            self.queue_key(host),
            self.open_key,
            self.open_key_of(owner or ""),
        ]
        verdict = await self._call(self._client().eval(_ENQUEUE, len(keys), *keys, *args))
        if verdict != b"ok":
            _refuse_if_full(verdict == b"all", verdict == b"key", max_open, max_open_per_key)
        job = _job(fields)
        with contextlib.suppress(EthostralError):  # the job exists: its event can be missing
            await self.publish(job)
        return job

    async def check_room(self, owner: str | None, max_open: int, max_open_per_key: int) -> None:
        """Raise :class:`JobsFullError` when no job could be queued now (checked before an
        upload is spooled; :meth:`create` checks again atomically)."""
        tx = self._client().pipeline(transaction=False)
        tx.scard(self.open_key)
        tx.scard(self.open_key_of(owner or ""))
        in_all, of_key = await self._call(tx.execute())
        _refuse_if_full(in_all >= max_open, of_key >= max_open_per_key, max_open, max_open_per_key)

    # reading
    async def get(self, job_id: str, owner: str | None = None) -> JobRecord | None:
        """The job, or None when there is none visible to ``owner`` (None: every job)."""
        raw = await self._call(self._client().hgetall(self.job_key(job_id)))
        if not raw:
            return None
        fields = {k.decode(): v.decode() for k, v in raw.items()}
        if owner is not None and fields.get("owner") != owner:
            return None
        return _record(fields)

    async def open_jobs(self) -> set[str]:
        """Ids of every job queued or running."""
        return {m.decode() for m in await self._call(self._client().smembers(self.open_key))}

    # running
    async def claim(self, host: str) -> Claim | None:
        """The next queued job of ``host``'s spool that may start now, under a new lease."""
        lease = uuid.uuid4().hex
        now = _now_ms()
        job_id = await self._call(
            self._client().eval(
                _CLAIM,
                2,
                self.queue_key(host),
                self.running_key,
                now,
                now + int(self.lease_s * 1000),
                lease,
                f"{self.prefix}job:",
                now_iso(),
            )
        )
        if not job_id:
            return None
        record = await self.get(job_id.decode())
        if record is None:  # vanished between the two calls (expired): nothing to run
            return None
        return Claim(record, lease)  # its `running` event is the worker's to publish

    async def renew(self, claim: Claim) -> str:
        """Extend the claim's lease; returns ``running``, ``cancelled`` or ``lost``."""
        job_id = claim.record.job.id
        status = await self._call(
            self._client().eval(
                _RENEW,
                2,
                self.job_key(job_id),
                self.running_key,
                claim.lease,
                _now_ms() + int(self.lease_s * 1000),
            )
        )
        return status.decode() if status else "lost"

    async def progress(self, claim: Claim, stage: str, fraction: float) -> None:
        """Record how far a running job has got; progress never goes backwards (a lower
        fraction than the stored one is dropped, and not published)."""
        job_id = claim.record.job.id
        updated = await self._call(
            self._client().eval(
                _PROGRESS, 1, self.job_key(job_id), claim.lease, stage, f"{fraction:.4f}", now_iso()
            )
        )
        if updated:
            await self.publish_current(job_id)

    async def requeue(self, claim: Claim, delay_s: float = 0.0, refund: bool = False) -> bool:
        """Put a running job back in its queue (to start after ``delay_s``); ``refund``:
        this run does not count as an attempt (it never really started)."""
        job_id = claim.record.job.id
        done = await self._call(
            self._client().eval(
                _REQUEUE,
                3,
                self.job_key(job_id),
                self.running_key,
                self.queue_key(claim.record.host),
                claim.lease,
                _now_ms() + int(delay_s * 1000),
                now_iso(),
                "1" if refund else "0",
            )
        )
        if done and not refund:  # a refunded run never started: nothing to tell
            await self.publish_current(job_id)
        return bool(done)

    async def complete(self, claim: Claim, write_session: Callable[[Any], None]) -> bool:
        """Mark the job done and, in the same transaction, run ``write_session`` (which
        queues the session's writes on the ``MULTI`` pipeline it is given), if the claim
        still holds; returns False (nothing written) when the job was cancelled or taken
        over."""
        job_id = claim.record.job.id
        key = self.job_key(job_id)
        owner = claim.record.owner
        for _ in range(5):
            try:
                async with self._client().pipeline(transaction=True) as pipe:
                    await self._call(pipe.watch(key))
                    status, lease = await self._call(pipe.hmget(key, ["status", "lease"]))
                    if status != b"running" or lease != claim.lease.encode():
                        return False
                    pipe.multi()
                    write_session(pipe)
                    pipe.hset(
                        key,
                        mapping={
                            "status": "done",
                            "stage": "",
                            "progress": "1",
                            "lease": "",
                            "updated_at": now_iso(),
                        },
                    )
                    pipe.expire(key, self.keep_s)
                    pipe.zrem(self.running_key, job_id)
                    pipe.srem(self.open_key, job_id)
                    pipe.srem(self.open_key_of(owner), job_id)
                    await self._call(pipe.execute())
            except WatchError:
                continue  # the job changed meanwhile (cancelled?): look again
            await self.publish_current(job_id)
            return True
        return False

    async def fail(
        self, job_id: str, detail: str, status_code: int, lease: str | None = None
    ) -> bool:
        """Mark a job failed (only for ``lease``'s holder when given)."""
        key = self.job_key(job_id)
        failed = await self._call(
            self._client().eval(
                _FAIL,
                3,
                key,
                self.running_key,
                self.open_key,
                lease or "",
                self.keep_s,
                now_iso(),
                detail,
                status_code,
                self._open_of_prefix,
            )
        )
        if failed:
            await self.publish_current(job_id)
        return bool(failed)

    async def cancel(self, job_id: str) -> JobStatus | None:
        """Cancel a queued or running job; returns its status before (None: no job)."""
        before = await self._call(
            self._client().eval(
                _CANCEL,
                3,
                self.job_key(job_id),
                self.running_key,
                self.open_key,
                TOMBSTONE_S,
                now_iso(),
                self._open_of_prefix,
                f"{self.prefix}jobs:queue:",
            )
        )
        if not before:
            return None
        status = before.decode()
        if status in ("queued", "running"):
            await self.publish_current(job_id)
        return status  # type: ignore[return-value]

    async def forget(self, job_id: str) -> None:
        """Remove a finished job's state and events."""
        await self._call(self._client().delete(self.job_key(job_id), self.events_key(job_id)))

    def _host_key(self, host: str) -> str:
        return f"{self.prefix}jobs:host:{host}"

    async def heartbeat(self, host: str, ttl_s: float) -> None:
        """Say that a replica reading ``host``'s spool is alive (for ``ttl_s``)."""
        tx = self._client().pipeline(transaction=True)
        tx.set(self._host_key(host), str(_now_ms()), px=int(ttl_s * 1000))
        tx.sadd(f"{self.prefix}jobs:hosts", host)
        await self._call(tx.execute())

    async def fail_orphans(self) -> list[str]:
        """Fail the queued jobs of spools no replica has read for a heartbeat's TTL (the
        host was replaced, its spool gone with it): their uploads cannot be run."""
        client = self._client()
        failed: list[str] = []
        for raw in await self._call(client.smembers(f"{self.prefix}jobs:hosts")):
            host = raw.decode()
            if await self._call(client.exists(self._host_key(host))):
                continue
            ids = await self._call(client.zrange(self.queue_key(host), 0, -1))
            detail = (
                f"the upload waited in the spool of {host!r}, where no replica has run "
                "since; upload it again"
            )
            for job_id in (i.decode() for i in ids):
                await self._call(client.zrem(self.queue_key(host), job_id))
                if await self.fail(job_id, detail, 503):
                    failed.append(job_id)
            if not await self._call(client.zcard(self.queue_key(host))):
                await self._call(client.srem(f"{self.prefix}jobs:hosts", host))
        return failed

    async def reap(self) -> tuple[list[str], list[str]]:
        """Queue again (or fail, after their last attempt) the jobs whose lease expired:
        their replica stopped. Returns (requeued ids, failed ids)."""
        requeued, failed = await self._call(
            self._client().eval(
                _REAP,
                1,
                self.running_key,
                _now_ms(),
                f"{self.prefix}job:",
                self.max_attempts,
                now_iso(),
                f"{self.prefix}jobs:queue:",
                self.keep_s,
                self.open_key,
                self._open_of_prefix,
            )
        )
        ids = [i.decode() for i in requeued], [i.decode() for i in failed]
        for job_id in ids[0] + ids[1]:
            with contextlib.suppress(EthostralError):  # the states changed: events may lag
                await self.publish_current(job_id)
        return ids

    async def next_start_s(self, host: str) -> float | None:
        """Seconds until the soonest queued job of ``host`` may start (None: none queued)."""
        rows = await self._call(self._client().zrange(self.queue_key(host), 0, 0, withscores=True))
        if not rows:
            return None
        return max(0.0, (rows[0][1] - _now_ms()) / 1000)

    async def master_secret(self, candidate: str) -> str:
        """The server's callback secret, kept in Redis: ``candidate`` if none was yet."""
        name = f"{self.prefix}callbacks:secret"
        client = self._client()
        await self._call(client.set(name, candidate, nx=True))
        stored = await self._call(client.get(name))
        return stored.decode() if stored is not None else candidate

    # events
    async def publish(self, job: Job) -> None:
        """Append the job's state to its event stream."""
        client = self._client()
        tx = client.pipeline(transaction=True)
        name = self.events_key(job.id)
        tx.xadd(name, {"job": job.model_dump_json()}, maxlen=EVENTS_KEPT, approximate=True)
        tx.expire(name, self.keep_s if job.status in ("done", "failed") else TOMBSTONE_S * 24)
        await self._call(tx.execute())

    async def publish_current(self, job_id: str) -> None:
        """Append the job's state as it is now to its event stream."""
        record = await self.get(job_id)
        if record is not None:
            await self.publish(record.job)

    async def events(
        self, job_id: str, after: str | None = None, block_s: float = 1.0
    ) -> AsyncIterator[tuple[str, Job] | None]:
        """The job's states from its stream after the event id ``after`` (None: all kept),
        as (event id, job); yields None after each ``block_s`` without news."""
        last = after or "0-0"
        name = self.events_key(job_id)
        block_ms = max(1, int(min(block_s, self.timeout_s / 2) * 1000))
        while True:
            rows = await self._call(self._client().xread({name: last}, count=50, block=block_ms))
            if not rows:
                yield None
                continue
            for _stream, entries in rows:
                for entry_id, fields in entries:
                    last = entry_id.decode()
                    yield last, Job.model_validate_json(fields[b"job"])


def _refuse_if_full(all_full: bool, key_full: bool, max_open: int, max_per_key: int) -> None:
    if key_full:
        what = f"this API key may have {max_per_key} jobs queued or running"
    elif all_full:
        what = f"the server holds at most {max_open} jobs queued or running"
    else:
        return
    raise JobsFullError(f"{what}; wait for one to finish", retry_after_s=30)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _job(fields: dict[str, str]) -> Job:
    code = fields.get("status_code") or ""
    progress = float(fields.get("progress") or 0)
    return Job(
        id=fields["id"],
        status=fields["status"],  # type: ignore[arg-type]
        stage=fields.get("stage") or None,
        progress=min(max(progress, 0.0), 1.0) if math.isfinite(progress) else 0.0,
        detail=fields.get("detail") or None,
        status_code=int(code) if code else None,
        filename=fields.get("filename", ""),
        created_at=fields.get("created_at", ""),
        updated_at=fields.get("updated_at", ""),
        attempts=int(fields.get("attempts") or 0),
    )


def _record(fields: dict[str, str]) -> JobRecord:
    key = fields.get("key") or ""
    return JobRecord(
        job=_job(fields),
        owner=fields.get("owner", ""),
        key=ApiKey.model_validate_json(key) if key else None,
        options=json.loads(fields.get("options") or "{}"),
        spool=fields.get("spool", ""),
        host=fields.get("host", ""),
        callback_url=fields.get("callback_url") or None,
        lease=fields.get("lease", ""),
    )


def check_job_id(raw: str) -> str:
    """Job ids are UUIDs (the session's id)."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise InvalidRequestError(f"{raw!r} is not a job id (ids are UUIDs)") from None
