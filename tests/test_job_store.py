"""JobStore against a real redis-server: bounds, claims, leases, completion at most once."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import redis
from redis_server import run

from ethostral_serve.jobs import JobsFullError, JobStore
from ethostral_serve.schema import Session
from ethostral_serve.sessions import SessionStore

HOST = "spool-a"


def _store(url: str, **kw: Any) -> JobStore:
    return JobStore(url, prefix=f"t{uuid.uuid4().hex[:8]}:", **kw)


async def _create(store: JobStore, owner: str | None = "key_a", host: str = HOST, **kw: Any):
    job_id = str(uuid.uuid4())
    args: dict[str, Any] = {
        "filename": "talk.wav",
        "owner": owner,
        "key": None,
        "options": {"language": "en", "diarize": True, "emotion": True, "adapter": None},
        "spool": f"/spool/{job_id}.upload",
        "host": host,
        "callback_url": None,
        "max_open": 100,
        "max_open_per_key": 100,
    }
    args.update(kw)
    return await store.create(job_id, **args)


def test_create_is_queued_and_visible_to_its_owner_only(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        job = await _create(store)
        mine = await store.get(job.id, "key_a")
        theirs = await store.get(job.id, "key_b")
        anyone = await store.get(job.id, None)
        return job, mine, theirs, anyone

    job, mine, theirs, anyone = run(go(), store)
    assert job.status == "queued" and job.progress == 0 and job.attempts == 0
    assert mine is not None and mine.job == job and mine.options["language"] == "en"
    assert theirs is None
    assert anyone is not None and anyone.owner == "key_a"


def test_bounds_per_key_and_in_all(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        for _ in range(2):
            await _create(store, owner="key_a", max_open=3, max_open_per_key=2)
        with pytest.raises(JobsFullError, match="this API key may have 2 jobs") as per_key:
            await _create(store, owner="key_a", max_open=3, max_open_per_key=2)
        await _create(store, owner="key_b", max_open=3, max_open_per_key=2)
        with pytest.raises(JobsFullError, match="at most 3 jobs") as in_all:
            await _create(store, owner="key_c", max_open=3, max_open_per_key=2)
        # a job that ends frees its place
        claim = await store.claim(HOST)
        assert claim is not None
        assert await store.fail(claim.record.job.id, "broken", 415, lease=claim.lease)
        await _create(store, owner="key_c", max_open=3, max_open_per_key=2)
        return per_key.value, in_all.value

    per_key, in_all = run(go(), store)
    assert per_key.status_code == in_all.status_code == 429
    assert per_key.retry_after_s >= 1


def test_claim_takes_jobs_in_order_of_their_own_spool_only(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        first = await _create(store)
        other = await _create(store, host="spool-b")
        second = await _create(store)
        claims = [await store.claim(HOST) for _ in range(3)]
        return first, other, second, claims

    first, other, second, claims = run(go(), store)
    assert [c.record.job.id if c else None for c in claims] == [first.id, second.id, None]
    assert claims[0].record.job.status == "running" and claims[0].record.job.attempts == 1
    assert claims[0].lease != claims[1].lease
    del other


def test_complete_stores_the_session_once_and_only_for_the_lease_holder(
    redis_url: str, raw: redis.Redis
) -> None:
    store = _store(redis_url)
    sessions = SessionStore(redis_url, key_prefix=f"{store.prefix}session:")

    async def go():
        job = await _create(store)
        claim = await store.claim(HOST)
        assert claim is not None
        session = Session(id=job.id, filename="talk.wav", language="en", duration_ms=1000)
        stale = type(claim)(claim.record, "not-the-lease")
        refused = await store.complete(stale, lambda tx: sessions.add_save(tx, session, "key_a"))
        missing = await sessions.list(owner="key_a")
        done = await store.complete(claim, lambda tx: sessions.add_save(tx, session, "key_a"))
        again = await store.complete(claim, lambda tx: sessions.add_save(tx, session, "key_a"))
        stored = await sessions.get(job.id, owner="key_a")
        record = await store.get(job.id)
        return refused, missing, done, again, stored, record

    refused, missing, done, again, stored, record = run(go(), store, sessions)
    assert refused is False and missing.sessions == []
    assert done is True and again is False
    assert stored.id == record.job.id
    assert record.job.status == "done" and record.job.progress == 1.0
    assert raw.scard(f"{store.prefix}jobs:open") == 0
    assert raw.zcard(f"{store.prefix}jobs:running") == 0
    assert raw.ttl(store.job_key(record.job.id)) > 0  # a finished job's state expires


def test_cancelled_running_job_cannot_complete(redis_url: str, raw: redis.Redis) -> None:
    store = _store(redis_url)
    sessions = SessionStore(redis_url, key_prefix=f"{store.prefix}session:")

    async def go():
        job = await _create(store)
        claim = await store.claim(HOST)
        assert claim is not None
        before = await store.cancel(job.id)
        renewed = await store.renew(claim)
        session = Session(id=job.id, filename="talk.wav", language="en", duration_ms=1000)
        done = await store.complete(claim, lambda tx: sessions.add_save(tx, session, "key_a"))
        progressed = await store.progress(claim, "asr", 0.5)
        record = await store.get(job.id)
        return before, renewed, done, progressed, record, session

    before, renewed, done, _, record, session = run(go(), store, sessions)
    assert before == "running" and renewed == "cancelled" and done is False
    assert record.job.status == "cancelled" and record.job.progress == 0
    assert raw.get(sessions.key(session.id)) is None
    assert raw.scard(f"{store.prefix}jobs:open") == 0


def test_cancel_queued_job_leaves_the_queue(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        job = await _create(store)
        before = await store.cancel(job.id)
        claim = await store.claim(HOST)
        again = await store.cancel(job.id)
        return before, claim, again

    before, claim, again = run(go(), store)
    assert before == "queued" and claim is None and again == "cancelled"


def test_expired_lease_is_queued_again_then_fails_after_its_last_attempt(
    redis_url: str,
) -> None:
    store = _store(redis_url, lease_s=1.0, max_attempts=2)

    async def go():
        job = await _create(store)
        first = await store.claim(HOST)
        assert first is not None
        assert await store.reap() == ([], [])  # the lease has not expired yet
        _expire_leases(store)
        requeued = await store.reap()
        second = await store.claim(HOST)
        assert second is not None
        lost = await store.renew(first)  # the first replica comes back: it lost the job
        _expire_leases(store)
        failed = await store.reap()
        return job, requeued, second, lost, failed, await store.get(job.id)

    job, requeued, second, lost, failed, record = run(go(), store)
    assert requeued == ([job.id], [])
    assert second.record.job.attempts == 2
    assert lost == "lost"
    assert failed == ([], [job.id])
    assert record.job.status == "failed" and record.job.status_code == 500
    assert "interrupted on each of its 2 attempts" in (record.job.detail or "")


def test_requeue_with_refund_and_delay(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        job = await _create(store)
        claim = await store.claim(HOST)
        assert claim is not None
        assert await store.requeue(claim, delay_s=3600, refund=True)
        waiting = await store.claim(HOST)  # not before an hour from now
        record = await store.get(job.id)
        wait_s = await store.next_start_s(HOST)
        return waiting, record, wait_s

    waiting, record, wait_s = run(go(), store)
    assert waiting is None
    assert record.job.status == "queued" and record.job.attempts == 0
    assert wait_s is not None and 3500 < wait_s <= 3600


def test_events_replay_every_state_in_order(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        job = await _create(store)
        claim = await store.claim(HOST)
        assert claim is not None
        await store.publish_current(job.id)  # the worker does once the job really starts
        await store.progress(claim, "asr", 0.5)
        await store.fail(job.id, "undecodable", 415, lease=claim.lease)
        seen = []
        async for item in store.events(job.id, block_s=0.2):
            if item is None:
                break
            seen.append(item)
        resumed = []
        async for item in store.events(job.id, after=seen[1][0], block_s=0.2):
            if item is None:
                break
            resumed.append(item[1].status)
        return seen, resumed

    seen, resumed = run(go(), store)
    assert [(j.status, j.stage, j.progress) for _, j in seen] == [
        ("queued", None, 0.0),
        ("running", None, 0.0),
        ("running", "asr", 0.5),
        ("failed", "asr", 0.5),
    ]
    assert seen[-1][1].status_code == 415 and seen[-1][1].detail == "undecodable"
    assert resumed == ["running", "failed"]


def test_a_late_lower_progress_report_is_dropped_and_not_published(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        job = await _create(store)
        claim = await store.claim(HOST)
        assert claim is not None
        await store.progress(claim, "asr", 0.9)
        await store.progress(claim, "diarize", 0.87)  # reached earlier, written later
        after_late = await store.get(job.id)
        await store.progress(claim, "emotion", 0.95)
        seen = []
        async for item in store.events(job.id, block_s=0.2):
            if item is None:
                break
            seen.append(item[1])
        return after_late, seen

    after_late, seen = run(go(), store)
    assert (after_late.job.stage, after_late.job.progress) == ("asr", 0.9)
    assert [(j.stage, j.progress) for j in seen] == [(None, 0.0), ("asr", 0.9), ("emotion", 0.95)]


def test_master_secret_is_made_once(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        return await store.master_secret("first"), await store.master_secret("second")

    assert run(go(), store) == ("first", "first")


def test_store_down_is_a_503(tmp_path) -> None:
    from redis_server import free_port

    from ethostral_serve.errors import StoreUnavailableError

    store = JobStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=0.5)
    with pytest.raises(StoreUnavailableError) as err:
        run(store.claim(HOST), store)
    assert err.value.status_code == 503


def _expire_leases(store: JobStore) -> None:
    """Move every running job's lease expiry into the past (a replica that stopped)."""
    with redis.Redis.from_url(store.url) as r:
        past = int(time.time() * 1000) - 1
        for member in r.zrange(store.running_key, 0, -1):
            r.zadd(store.running_key, {member: past})


def test_queued_jobs_of_a_spool_no_replica_reads_fail_with_a_503(
    redis_url: str, raw: redis.Redis
) -> None:
    store = _store(redis_url)

    async def go():
        await store.heartbeat(HOST, ttl_s=60)
        await store.heartbeat("spool-gone", ttl_s=60)
        alive = await _create(store)
        orphan = await _create(store, host="spool-gone")
        raw.delete(f"{store.prefix}jobs:host:spool-gone")  # its heartbeat lapsed
        failed = await store.fail_orphans()
        return alive, orphan, failed, await store.get(alive.id), await store.get(orphan.id)

    _, orphan, failed, alive_now, orphan_now = run(go(), store)
    assert failed == [orphan.id]
    assert alive_now.job.status == "queued"
    assert orphan_now.job.status == "failed" and orphan_now.job.status_code == 503
    assert "spool-gone" in (orphan_now.job.detail or "")
    assert raw.scard(f"{store.prefix}jobs:open") == 1
    assert raw.smembers(f"{store.prefix}jobs:hosts") == {HOST.encode()}


def test_check_room_refuses_before_anything_is_spooled(redis_url: str) -> None:
    store = _store(redis_url)

    async def go():
        await _create(store, owner="key_a")
        await store.check_room("key_b", max_open=5, max_open_per_key=1)  # room for b
        with pytest.raises(JobsFullError, match="this API key may have 1 jobs"):
            await store.check_room("key_a", max_open=5, max_open_per_key=1)
        with pytest.raises(JobsFullError, match="at most 1 jobs"):
            await store.check_room("key_b", max_open=1, max_open_per_key=5)

    run(go(), store)
