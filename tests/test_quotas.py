"""Per-key quotas against a real ``redis-server``: concurrency slots and audio per UTC day.

Nothing here waits on the wall clock: the lease renewal is driven by a fake
``asyncio.sleep`` (and a fake ``time.time``) inside ``ethostral_serve.quotas`` only.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, TypeVar

import pytest
import redis
from redis_server import free_port, run

from ethostral_serve import quotas
from ethostral_serve.errors import StoreUnavailableError
from ethostral_serve.keys import ApiKey, KeyLimits
from ethostral_serve.quotas import QuotaExceededError, QuotaStore, seconds_to_utc_midnight

T = TypeVar("T")
T0 = 1_900_000_000.0  # the fake clock's start (2030-03-17), a whole number of seconds


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests never see each other's counters."""
    return f"t-quotas-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def store(redis_url: str, prefix: str) -> QuotaStore:
    return QuotaStore(redis_url, prefix=prefix, lease_s=30.0)


def make_key(key_id: str = "key_aaaaaaaaaaaa", **limits: Any) -> ApiKey:
    return ApiKey(
        id=key_id,
        name=key_id,
        created_at="2030-01-01T00:00:00+00:00",
        limits=KeyLimits(**limits),
    )


class FakeClock:
    """Stands in for the ``time`` module in ``ethostral_serve.quotas``."""

    def __init__(self, now: float = T0) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


class FakeSleep:
    """An ``asyncio.sleep`` that returns only when the test says so."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self._sleeping: asyncio.Queue[float] = asyncio.Queue()
        self._waker: asyncio.Future[None] | None = None

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)
        self._waker = asyncio.get_running_loop().create_future()
        self._sleeping.put_nowait(delay)
        await self._waker

    async def asleep(self) -> float:
        """Wait (at most 10 s, in case of a bug) until the next call starts sleeping."""
        return await asyncio.wait_for(self._sleeping.get(), 10)

    def wake(self) -> None:
        assert self._waker is not None and not self._waker.done()
        self._waker.set_result(None)


class AsyncioWithSleep:
    """The ``asyncio`` module, but for ``sleep``."""

    def __init__(self, sleep: Callable[[float], Coroutine[Any, Any, None]]) -> None:
        self.sleep = sleep

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    clock = FakeClock()
    monkeypatch.setattr(quotas, "time", clock)
    return clock


def fake_sleep(monkeypatch: pytest.MonkeyPatch) -> FakeSleep:
    """Replace ``asyncio.sleep`` in ``ethostral_serve.quotas`` only; call inside a loop."""
    sleep = FakeSleep()
    monkeypatch.setattr(quotas, "asyncio", AsyncioWithSleep(sleep))
    return sleep


def leases(raw: redis.Redis, name: str) -> list[tuple[bytes, float]]:
    return raw.zrange(name, 0, -1, withscores=True)


# --- concurrency slots ---------------------------------------------------------------


def test_a_third_upload_waits_for_one_of_two(
    store: QuotaStore, raw: redis.Redis, prefix: str
) -> None:
    key = make_key(max_concurrent_uploads=2)
    name = f"{prefix}slots:uploads:{key.id}"

    async def go() -> None:
        async with contextlib.AsyncExitStack() as held:
            await held.enter_async_context(store.slot(key, "uploads"))
            assert len(leases(raw, name)) == 1
            await held.enter_async_context(store.slot(key, "uploads"))
            assert len(leases(raw, name)) == 2
            with pytest.raises(QuotaExceededError, match="2 uploads at once") as info:
                async with store.slot(key, "uploads"):
                    pytest.fail("a third slot was granted")
            assert info.value.status_code == 429
            assert 1 <= info.value.retry_after_s <= 30
            assert len(leases(raw, name)) == 2  # the refused one left nothing behind
        assert leases(raw, name) == []  # both released on the way out

        async with store.slot(key, "uploads"):  # and free again
            assert len(leases(raw, name)) == 1

    run(go(), store)


def test_leaving_a_slot_frees_it(store: QuotaStore, raw: redis.Redis, prefix: str) -> None:
    key = make_key(max_concurrent_streams=1)
    name = f"{prefix}slots:streams:{key.id}"

    async def go() -> None:
        for _ in range(3):
            async with store.slot(key, "streams"):
                assert len(leases(raw, name)) == 1
                with pytest.raises(QuotaExceededError, match="1 live stream at once"):
                    async with store.slot(key, "streams"):
                        pass
            assert leases(raw, name) == []

    run(go(), store)


def test_a_slot_is_freed_when_the_block_raises(
    store: QuotaStore, raw: redis.Redis, prefix: str
) -> None:
    key = make_key(max_concurrent_uploads=1)

    async def go() -> None:
        with pytest.raises(RuntimeError, match="boom"):
            async with store.slot(key, "uploads"):
                raise RuntimeError("boom")
        assert leases(raw, f"{prefix}slots:uploads:{key.id}") == []
        async with store.slot(key, "uploads"):
            pass

    run(go(), store)


def test_a_slot_is_freed_when_its_task_is_cancelled(
    store: QuotaStore, raw: redis.Redis, prefix: str
) -> None:
    key = make_key(max_concurrent_uploads=1)
    name = f"{prefix}slots:uploads:{key.id}"

    async def go() -> None:
        holding = asyncio.Event()

        async def hold() -> None:
            async with store.slot(key, "uploads"):
                holding.set()
                await asyncio.Event().wait()  # forever

        task = asyncio.create_task(hold())
        await asyncio.wait_for(holding.wait(), 10)
        assert len(leases(raw, name)) == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert leases(raw, name) == []
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the renewal is gone too

    run(go(), store)


def test_a_dead_holders_expired_lease_does_not_count(
    store: QuotaStore, raw: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    key = make_key(max_concurrent_uploads=1)
    name = f"{prefix}slots:uploads:{key.id}"
    now_ms = int(T0 * 1000)
    # What a replica that died holding the slot leaves: a lease nobody renews any more.
    raw.zadd(name, {"dead-replica": now_ms - 1})

    async def go() -> None:
        async with store.slot(key, "uploads"):
            held = leases(raw, name)
            assert [lease for lease, _ in held] != [b"dead-replica"]
            assert held[0][1] == now_ms + 30_000  # ours, expiring one lease from now
            assert len(held) == 1  # the dead lease was dropped

    run(go(), store)


def test_a_live_lease_of_another_replica_counts(
    store: QuotaStore, raw: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    key = make_key(max_concurrent_uploads=1)
    name = f"{prefix}slots:uploads:{key.id}"
    raw.zadd(name, {"other-replica": int(T0 * 1000) + 12_500})  # 12.5 s left on its lease

    async def go() -> None:
        with pytest.raises(QuotaExceededError) as info:
            async with store.slot(key, "uploads"):
                pass
        assert info.value.retry_after_s == 13  # when that lease would lapse, rounded up

        clock.now += 12.5  # ... and it does: it expires the very millisecond it ends
        async with store.slot(key, "uploads"):
            assert [lease for lease, _ in leases(raw, name)] != [b"other-replica"]

    run(go(), store)


def test_retry_after_is_at_most_30_seconds(
    redis_url: str, raw: redis.Redis, prefix: str, clock: FakeClock
) -> None:
    store = QuotaStore(redis_url, prefix=prefix, lease_s=300.0)
    key = make_key(max_concurrent_uploads=1)

    async def go() -> None:
        async with store.slot(key, "uploads"):
            with pytest.raises(QuotaExceededError) as info:
                async with store.slot(key, "uploads"):
                    pass
            assert info.value.retry_after_s == 30  # not the 300 s the lease has left

    run(go(), store)


def test_a_key_without_limits_holds_nothing(redis_url: str, raw: redis.Redis, prefix: str) -> None:
    store = QuotaStore(redis_url, prefix=prefix)
    key = make_key()

    async def go() -> None:
        async with contextlib.AsyncExitStack() as held:
            for _ in range(5):
                await held.enter_async_context(store.slot(key, "uploads"))
                await held.enter_async_context(store.slot(key, "streams"))
            assert list(raw.scan_iter(match=f"{prefix}*")) == []
            assert asyncio.all_tasks() == {asyncio.current_task()}  # nothing to renew

    run(go(), store)


def test_a_key_without_limits_works_while_redis_is_down() -> None:
    store = QuotaStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)

    async def go() -> bool:
        async with store.slot(make_key(), "uploads"):
            return True

    assert run(go(), store)


def test_uploads_and_streams_are_counted_separately(
    store: QuotaStore, raw: redis.Redis, prefix: str
) -> None:
    key = make_key(max_concurrent_uploads=1, max_concurrent_streams=1)

    async def go() -> None:
        async with store.slot(key, "uploads"), store.slot(key, "streams"):
            assert len(leases(raw, f"{prefix}slots:uploads:{key.id}")) == 1
            assert len(leases(raw, f"{prefix}slots:streams:{key.id}")) == 1
            for kind in ("uploads", "streams"):
                with pytest.raises(QuotaExceededError):
                    async with store.slot(key, kind):
                        pass

    run(go(), store)


def test_only_the_limited_kind_is_counted(store: QuotaStore, raw: redis.Redis, prefix: str) -> None:
    key = make_key(max_concurrent_uploads=1)

    async def go() -> None:
        async with (
            store.slot(key, "uploads"),
            store.slot(key, "streams"),
            store.slot(key, "streams"),
        ):
            assert not raw.exists(f"{prefix}slots:streams:{key.id}")

    run(go(), store)


def test_keys_are_counted_separately(store: QuotaStore, raw: redis.Redis, prefix: str) -> None:
    one = make_key("key_111111111111", max_concurrent_uploads=1)
    two = make_key("key_222222222222", max_concurrent_uploads=1)

    async def go() -> None:
        async with store.slot(one, "uploads"), store.slot(two, "uploads"):
            assert len(leases(raw, f"{prefix}slots:uploads:{one.id}")) == 1
            assert len(leases(raw, f"{prefix}slots:uploads:{two.id}")) == 1
            with pytest.raises(QuotaExceededError):
                async with store.slot(one, "uploads"):
                    pass

    run(go(), store)


def test_a_slot_set_expires_after_two_leases(
    store: QuotaStore, raw: redis.Redis, prefix: str
) -> None:
    key = make_key(max_concurrent_uploads=1)

    async def go() -> None:
        async with store.slot(key, "uploads"):
            assert 59_000 <= raw.pttl(f"{prefix}slots:uploads:{key.id}") <= 60_000

    run(go(), store)


def test_a_held_slot_renews_its_lease(
    store: QuotaStore,
    raw: redis.Redis,
    prefix: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = make_key(max_concurrent_uploads=1)
    name = f"{prefix}slots:uploads:{key.id}"

    async def go() -> None:
        sleep = fake_sleep(monkeypatch)
        async with store.slot(key, "uploads"):
            assert await sleep.asleep() == 10.0  # a third of the 30 s lease
            [(lease, first)] = leases(raw, name)
            assert first == T0 * 1000 + 30_000
            raw.pexpire(name, 5_000)  # to see the set's expiry pushed forward too

            clock.now += 10.0
            sleep.wake()
            await sleep.asleep()  # renewed, and asleep until the next renewal
            assert leases(raw, name) == [(lease, T0 * 1000 + 40_000)]
            assert raw.pttl(name) > 50_000

            clock.now += 10.0
            sleep.wake()
            await sleep.asleep()
            assert leases(raw, name) == [(lease, T0 * 1000 + 50_000)]

            # A lease dropped meanwhile (it lapsed and another taker purged it) is not
            # brought back by the renewal: that would exceed the limit.
            raw.zrem(name, lease)
            clock.now += 10.0
            sleep.wake()
            await sleep.asleep()
            assert leases(raw, name) == []
        assert sleep.delays == [10.0] * 4
        assert asyncio.all_tasks() == {asyncio.current_task()}  # the renewal stopped

    run(go(), store)


def test_a_renewed_lease_outlives_its_first_expiry(
    store: QuotaStore,
    raw: redis.Redis,
    prefix: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    key = make_key(max_concurrent_uploads=1)

    async def go() -> None:
        sleep = fake_sleep(monkeypatch)
        async with store.slot(key, "uploads"):
            for _ in range(6):  # 60 s: twice the lease, renewed every 10 s
                await sleep.asleep()
                clock.now += 10.0
                sleep.wake()
            await sleep.asleep()
            with pytest.raises(QuotaExceededError) as info:  # still held
                async with store.slot(key, "uploads"):
                    pass
            assert info.value.retry_after_s == 30

    run(go(), store)


def test_an_unrenewed_lease_lapses(
    store: QuotaStore,
    raw: redis.Redis,
    prefix: str,
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A holder that stops renewing (a frozen replica) loses its slot after one lease."""
    key = make_key(max_concurrent_uploads=1)

    async def go() -> None:
        sleep = fake_sleep(monkeypatch)
        async with store.slot(key, "uploads"):
            await sleep.asleep()  # and never woken: no renewal
            clock.now += 29.5  # binary fractions: exact in float milliseconds
            with pytest.raises(QuotaExceededError):
                async with store.slot(key, "uploads"):
                    pass
            clock.now += 0.5
            async with store.slot(key, "uploads"):
                pass

    run(go(), store)


def test_slots_need_redis() -> None:
    store = QuotaStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)

    async def go() -> None:
        async with store.slot(make_key(max_concurrent_streams=1), "streams"):
            pytest.fail("a slot was granted without Redis")

    with pytest.raises(StoreUnavailableError) as info:
        run(go(), store)
    assert info.value.status_code == 503


def test_retry_after_is_at_least_one_second() -> None:
    for wait in (0, -5, 1):
        assert QuotaExceededError("x", wait).retry_after_s == 1
    assert QuotaExceededError("x", 7).retry_after_s == 7
    assert QuotaExceededError("x", 7).status_code == 429


# --- audio per UTC day ---------------------------------------------------------------


class FrozenDatetime(datetime):
    """``datetime`` whose ``now`` is ``moment``."""

    moment = datetime(2030, 5, 6, 12, 0, tzinfo=UTC)

    @classmethod
    def now(cls, tz: Any = None) -> datetime:  # type: ignore[override]
        return cls.moment.astimezone(tz) if tz is not None else cls.moment.replace(tzinfo=None)


@pytest.fixture
def frozen(monkeypatch: pytest.MonkeyPatch) -> type[FrozenDatetime]:
    """Noon UTC on 2030-05-06 in ``ethostral_serve.quotas``, until the test moves it."""
    monkeypatch.setattr(FrozenDatetime, "moment", datetime(2030, 5, 6, 12, 0, tzinfo=UTC))
    monkeypatch.setattr(quotas, "datetime", FrozenDatetime)
    return FrozenDatetime


def test_add_audio_accumulates_per_key_and_day(
    store: QuotaStore, raw: redis.Redis, prefix: str, frozen: type[FrozenDatetime]
) -> None:
    async def go() -> list[float]:
        return [
            await store.add_audio("key_a", 1.5),
            await store.add_audio("key_a", 2.25),
            await store.add_audio("key_a", 0),  # nothing to count: nothing written
            await store.add_audio("key_a", -3),
            await store.add_audio("key_b", 10),
            await store.audio_used_s("key_a"),
            await store.audio_used_s("key_b"),
            await store.audio_used_s("key_c"),
        ]

    assert run(go(), store) == [1.5, 3.75, 3.75, 3.75, 10.0, 3.75, 10.0, 0.0]
    usage = f"{prefix}usage:key_a:2030-05-06"
    assert float(raw.get(usage)) == 3.75
    assert 2 * 86400 - 10 <= raw.ttl(usage) <= 2 * 86400
    assert sorted(raw.scan_iter(match=f"{prefix}*")) == [
        usage.encode(),
        f"{prefix}usage:key_b:2030-05-06".encode(),
    ]

    frozen.moment = datetime(2030, 5, 7, 0, 0, tzinfo=UTC)  # the next UTC day
    assert run(store.audio_used_s("key_a"), store) == 0.0
    assert run(store.add_audio("key_a", 1), store) == 1.0
    assert float(raw.get(usage)) == 3.75  # yesterday's count is kept (until its TTL)


def test_add_audio_counts_milliseconds(store: QuotaStore, frozen: type[FrozenDatetime]) -> None:
    async def go() -> float:
        for _ in range(10):
            await store.add_audio("key_a", 0.1)
        return await store.audio_used_s("key_a")

    assert run(go(), store) == pytest.approx(1.0, abs=1e-9)


def test_add_audio_uses_todays_utc_date(store: QuotaStore, raw: redis.Redis, prefix: str) -> None:
    before = datetime.now(UTC).date().isoformat()
    run(store.add_audio("key_a", 2), store)
    after = datetime.now(UTC).date().isoformat()
    assert {f"{prefix}usage:key_a:{day}".encode() for day in (before, after)} & set(
        raw.scan_iter(match=f"{prefix}*")
    )


def test_check_audio_refuses_at_the_daily_limit(
    store: QuotaStore, frozen: type[FrozenDatetime]
) -> None:
    key = make_key(audio_hours_per_day=1.0)

    async def go() -> None:
        await store.check_audio(key)  # nothing used yet
        await store.add_audio(key.id, 3599)
        await store.check_audio(key)
        await store.check_audio(key, pending_s=0.5)
        with pytest.raises(QuotaExceededError, match=r"1 hours of audio") as info:
            await store.check_audio(key, pending_s=1)  # exactly at the limit
        assert info.value.status_code == 429
        assert info.value.retry_after_s == 43200 == seconds_to_utc_midnight()  # frozen noon
        await store.add_audio(key.id, 1)
        with pytest.raises(QuotaExceededError, match=r"\(1\.00 h\)"):
            await store.check_audio(key)
        await store.add_audio(key.id, 100)
        with pytest.raises(QuotaExceededError):
            await store.check_audio(key)
        await store.check_audio(make_key("key_other", audio_hours_per_day=1.0))

    run(go(), store)


def test_check_audio_retry_after_is_until_utc_midnight(store: QuotaStore) -> None:
    key = make_key(audio_hours_per_day=0.001)  # 3.6 s

    async def go() -> QuotaExceededError:
        with pytest.raises(QuotaExceededError) as info:
            await store.check_audio(key, pending_s=4)
        return info.value

    before = seconds_to_utc_midnight()
    error = run(go(), store)
    after = seconds_to_utc_midnight()
    low, high = sorted((before, after))
    assert low - 2 <= error.retry_after_s <= high + 2
    assert 1 <= error.retry_after_s <= 86400


def test_check_audio_without_a_limit_never_refuses(
    store: QuotaStore, raw: redis.Redis, prefix: str
) -> None:
    run(store.check_audio(make_key(), pending_s=1e9), store)
    assert list(raw.scan_iter(match=f"{prefix}*")) == []


def test_audio_counting_needs_redis() -> None:
    store = QuotaStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)
    for call in (
        store.add_audio("key_a", 1),
        store.audio_used_s("key_a"),
        store.check_audio(make_key(audio_hours_per_day=1.0)),
    ):
        with pytest.raises(StoreUnavailableError):
            run(call, store)
    run(store.check_audio(make_key()), store)  # no limit: no Redis needed


@pytest.mark.parametrize(
    ("now", "seconds"),
    [
        (datetime(2030, 5, 6, 23, 59, 59, 500_000, tzinfo=UTC), 1),
        (datetime(2030, 5, 6, 23, 59, 59, 999_999, tzinfo=UTC), 1),
        (datetime(2030, 5, 6, 23, 59, 58, 200_000, tzinfo=UTC), 2),
        (datetime(2030, 5, 6, 0, 0, 0, tzinfo=UTC), 86400),
        (datetime(2030, 5, 6, 0, 0, 0, 1, tzinfo=UTC), 86400),
        (datetime(2030, 5, 6, 12, 0, tzinfo=UTC), 43200),
        (datetime(2030, 12, 31, 18, 0, tzinfo=UTC), 6 * 3600),  # across a year
        (datetime(2032, 2, 28, 23, 0, tzinfo=UTC), 3600),  # a leap year
    ],
)
def test_seconds_to_utc_midnight(now: datetime, seconds: int) -> None:
    assert seconds_to_utc_midnight(now) == seconds


def test_seconds_to_utc_midnight_now() -> None:
    now = datetime.now(UTC)
    tomorrow = datetime.combine(now.date() + timedelta(days=1), datetime.min.time(), UTC)
    expected = math.ceil((tomorrow - now).total_seconds())
    assert abs(seconds_to_utc_midnight() - expected) <= 2 or expected <= 2


def test_seconds_to_utc_midnight_of_a_time_in_another_zone() -> None:
    # 01:00 at +02:00 is 23:00 UTC the day before: one hour to UTC midnight, not 23
    now = datetime(2030, 5, 6, 1, 0, tzinfo=timezone(timedelta(hours=2)))
    assert seconds_to_utc_midnight(now) == 3600


def test_cancelling_a_holder_as_it_leaves_its_slot_is_not_lost(
    store: QuotaStore, raw: redis.Redis, prefix: str
) -> None:
    key = make_key(max_concurrent_uploads=1)

    async def go() -> str:
        async def hold() -> str:
            async with store.slot(key, "uploads"):
                # cancelled on the next loop turn: while the slot's exit awaits the renewal
                asyncio.get_running_loop().call_soon(task.cancel)
            return "carried on after being cancelled"

        task = asyncio.create_task(hold())
        try:
            return await task
        except asyncio.CancelledError:
            return "cancelled"
        finally:
            assert leases(raw, f"{prefix}slots:uploads:{key.id}") == []

    assert run(go(), store) == "cancelled"


def test_a_streams_usage_is_counted_every_ten_seconds_and_stops_it_when_used_up(
    redis_url: str, prefix: str
) -> None:
    from ethostral_serve.api.auth import Access, Caller
    from ethostral_serve.api.stream import StreamUsage
    from ethostral_serve.keys import KeyStore

    store = QuotaStore(redis_url, prefix=prefix)
    key = make_key(audio_hours_per_day=25 / 3600)
    usage = StreamUsage(Access(KeyStore(redis_url, prefix=prefix), store), Caller(key))

    async def go() -> None:
        await usage.update(9.0)  # under 10 s: not counted yet
        assert await store.audio_used_s(key.id) == 0.0
        await usage.update(12.0)
        assert await store.audio_used_s(key.id) == 12.0
        with pytest.raises(QuotaExceededError):
            await usage.update(26.0)  # 26 s counted: over the 25 s of the day
        await usage.update(27.5, final=True)  # the rest is counted, and never raises
        assert await store.audio_used_s(key.id) == 27.5

    run(go(), store, usage.access.keys)  # type: ignore[arg-type]


def test_a_streams_usage_waits_while_redis_is_down() -> None:
    from ethostral_serve.api.auth import Access, Caller
    from ethostral_serve.api.stream import StreamUsage
    from ethostral_serve.keys import KeyStore

    url = f"redis://127.0.0.1:{free_port()}/0"
    key = make_key(audio_hours_per_day=1.0)
    access = Access(KeyStore(url, timeout_s=0.5), QuotaStore(url, timeout_s=0.5))
    usage = StreamUsage(access, Caller(key))
    run(usage.update(30.0), access.quotas)  # type: ignore[arg-type]
    assert usage.counted_s == 0.0  # not lost: counted once Redis answers again
