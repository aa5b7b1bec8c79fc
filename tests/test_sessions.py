"""SessionStore against a real ``redis-server``, and the embedded Redis surviving restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import redis
from redis_server import free_port, redis_server

from ethostral_serve.embedded_redis import EmbeddedRedis, resolve_redis_url
from ethostral_serve.errors import (
    CorruptSessionError,
    SessionNotFoundError,
    StoreUnavailableError,
)
from ethostral_serve.schema import Emotion, Segment, Session, Word
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import RedisSettings, Settings

T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], *close: SessionStore) -> T:
    """Run a coroutine on a fresh event loop (no pytest-asyncio), then close ``close``'s pools."""

    async def go() -> T:
        try:
            return await coro
        finally:
            for store in close:
                await store.aclose()

    return asyncio.run(go())


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port, without persistence."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client on the same server, to look behind the store's back."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


def make_session() -> Session:
    """A session with every field filled, including emotion and words."""
    return Session(
        filename="call.wav",
        language="en",
        duration_ms=4200,
        segments=[
            Segment(
                speaker="s0",
                start_ms=0,
                end_ms=1800,
                text="Hello there.",
                emotion=Emotion(
                    label="Happy", valence=0.6, arousal=0.3, dominance=0.1, confidence=0.82
                ),
                words=[
                    Word(word="Hello", start_ms=0, end_ms=700, probability=0.98),
                    Word(word=" there.", start_ms=700, end_ms=1800, probability=0.91),
                ],
            ),
            Segment(speaker="s1", start_ms=2000, end_ms=4200, text="Héllo — ça va?", emotion=None),
        ],
    )


def test_save_then_get_returns_an_equal_session(redis_url: str) -> None:
    session = make_session()

    async def go() -> Session:
        store = SessionStore(redis_url)
        try:
            await store.save(session)
            return await store.get(session.id)
        finally:
            await store.aclose()

    got = run(go())
    assert got == session
    assert got.segments[0].emotion == session.segments[0].emotion
    assert got.segments[0].words == session.segments[0].words


def test_one_store_serves_several_event_loops(redis_url: str) -> None:
    store = SessionStore(redis_url)  # built outside any loop, like a Serve replica
    session = make_session()
    run(store.save(session))  # leaves a pool bound to a loop that is then closed
    assert run(store.get(session.id)) == session  # a new loop gets its own pool

    background = asyncio.new_event_loop()  # a long-lived loop in another thread (uvicorn)
    thread = threading.Thread(target=background.run_forever, daemon=True)
    thread.start()
    try:
        got = asyncio.run_coroutine_threadsafe(store.get(session.id), background).result(10)
        assert got == session
        assert run(store.get(session.id), store) == session  # aclose reaches both loops
    finally:
        background.call_soon_threadsafe(background.stop)
        thread.join(10)
        background.close()


def test_get_unknown_id_is_not_found(redis_url: str) -> None:
    sid = str(uuid.uuid4())
    with pytest.raises(SessionNotFoundError, match=sid) as info:
        store = SessionStore(redis_url)
        run(store.get(sid), store)
    assert info.value.status_code == 404


def test_deleted_session_is_gone(redis_url: str, raw: redis.Redis) -> None:
    store = SessionStore(redis_url, key_prefix="t-delete:")
    session = make_session()
    run(store.save(session), store)
    assert raw.exists(f"t-delete:{session.id}")
    run(store.delete(session.id), store)
    assert not raw.exists(f"t-delete:{session.id}")
    with pytest.raises(SessionNotFoundError):
        run(store.get(session.id), store)
    with pytest.raises(SessionNotFoundError):
        run(store.delete(session.id), store)


def test_delete_unknown_id_is_not_found(redis_url: str) -> None:
    with pytest.raises(SessionNotFoundError):
        store = SessionStore(redis_url)
        run(store.delete(str(uuid.uuid4())), store)


def test_ttl_is_set_when_configured(redis_url: str, raw: redis.Redis) -> None:
    session = make_session()
    store = SessionStore(redis_url, key_prefix="t-ttl:", ttl_s=600)
    run(store.save(session), store)
    assert 590 <= raw.ttl(f"t-ttl:{session.id}") <= 600

    store = SessionStore(redis_url, key_prefix="t-nottl:")
    run(store.save(session), store)
    assert raw.ttl(f"t-nottl:{session.id}") == -1  # no expiry


def test_corrupt_values_raise_a_clear_error_and_stay_untouched(
    redis_url: str, raw: redis.Redis
) -> None:
    store = SessionStore(redis_url, key_prefix="t-corrupt:")
    other = make_session()
    values: dict[str, bytes] = {
        "not-json": b"{not json",
        "wrong-shape": b'{"id": "wrong-shape", "filename": 3}',
        "not-utf8": b"\xff\xfe\x00",
        "other-id": other.model_dump_json().encode(),
    }
    for sid, value in values.items():
        raw.set(f"t-corrupt:{sid}", value)
        with pytest.raises(CorruptSessionError, match=sid) as info:
            run(store.get(sid), store)
        assert info.value.status_code == 500
        assert raw.get(f"t-corrupt:{sid}") == value

    raw.rpush("t-corrupt:a-list", "x")
    with pytest.raises(CorruptSessionError, match="not a string"):
        run(store.get("a-list"), store)
    assert raw.lrange("t-corrupt:a-list", 0, -1) == [b"x"]


def test_ping_answers_when_redis_is_up(redis_url: str) -> None:
    store = SessionStore(redis_url)
    run(store.ping(), store)


def test_connection_refused_is_store_unavailable_quickly() -> None:
    store = SessionStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)
    calls = [
        store.ping(),
        store.get("x"),
        store.delete("x"),
        store.save(make_session()),
    ]
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="session store unavailable") as info:
            run(call, store)
        assert time.monotonic() - t0 < 1.5
        assert info.value.status_code == 503


def test_a_server_that_never_answers_times_out_as_store_unavailable() -> None:
    with socket.socket() as listener:  # accepts connections, never replies
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        store = SessionStore(f"redis://127.0.0.1:{port}/0", timeout_s=0.5)
        t0 = time.monotonic()
        with pytest.raises(StoreUnavailableError, match="session store unavailable"):
            run(store.get("x"), store)
        assert time.monotonic() - t0 < 0.5 + 1.0


# --- the embedded Redis -------------------------------------------------------------


def test_embedded_redis_keeps_sessions_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "not" / "yet" / "there"
    session = make_session()
    with EmbeddedRedis(data_dir) as server:
        assert server.owner and server.running
        assert server.url.startswith("unix://")
        store = SessionStore(server.url)
        run(store.save(session), store)
    assert not server.running
    assert (data_dir / "sessions.rdb").exists()

    with EmbeddedRedis(data_dir) as again:
        assert again.owner
        store = SessionStore(again.url)
        assert run(store.get(session.id), store) == session


def test_a_store_reconnects_after_the_server_restarts(tmp_path: Path) -> None:
    session = make_session()

    async def go() -> Session:
        with EmbeddedRedis(tmp_path) as server:
            store = SessionStore(server.url)
            await store.save(session)  # leaves a pooled connection to the old server
        with EmbeddedRedis(tmp_path):
            try:
                return await store.get(session.id)
            finally:
                await store.aclose()

    assert run(go()) == session


def test_embedded_redis_keeps_sessions_after_a_crash(tmp_path: Path) -> None:
    session = make_session()
    server = EmbeddedRedis(tmp_path).start()
    try:
        store = SessionStore(server.url)
        run(store.save(session), store)
        time.sleep(1.5)  # appendfsync everysec
        assert server._proc is not None
        os.kill(server._proc.pid, signal.SIGKILL)  # no chance to save on exit
        server._proc.wait(10)
    finally:
        server.stop()
    with EmbeddedRedis(tmp_path) as again:
        store = SessionStore(again.url)
        assert run(store.get(session.id), store) == session


def test_a_second_embedded_redis_on_the_same_dir_reuses_the_running_one(tmp_path: Path) -> None:
    session = make_session()
    with EmbeddedRedis(tmp_path) as first:
        second = EmbeddedRedis(tmp_path).start()
        assert not second.owner and second.url == first.url
        store = SessionStore(second.url)
        run(store.save(session), store)
        second.stop()  # detaches only: the first one's server keeps running
        assert first.running
        store = SessionStore(first.url)
        assert run(store.get(session.id), store) == session
        assert sum(1 for p in tmp_path.iterdir() if p.suffix == ".sock") == 1


def test_embedded_redis_with_a_long_data_dir_uses_a_short_socket(tmp_path: Path) -> None:
    deep = tmp_path.joinpath(*(["d" * 30] * 4))
    with EmbeddedRedis(deep) as server:
        assert len(os.fsencode(server.socket_path)) <= 100
        store = SessionStore(server.url)
        run(store.ping(), store)
    assert (deep / "sessions.rdb").exists()


def test_resolve_redis_url_prefers_the_configured_url(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path, redis=RedisSettings(url="redis://example:6379/0"))
    assert resolve_redis_url(settings) == ("redis://example:6379/0", None)
    assert not (tmp_path / "redis").exists()


def test_resolve_redis_url_starts_an_embedded_redis_under_the_cache_dir(tmp_path: Path) -> None:
    url, server = resolve_redis_url(Settings(cache_dir=tmp_path))
    assert server is not None
    try:
        assert server.data_dir == (tmp_path / "redis").resolve()
        assert url == server.url
        store = SessionStore(url)
        run(store.ping(), store)
    finally:
        server.stop()


def test_redis_url_comes_from_redis_url_unless_set_explicitly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://cache.internal:6379/2")
    monkeypatch.delenv("ETHOSTRAL_REDIS__URL", raising=False)
    assert Settings().redis.url == "redis://cache.internal:6379/2"
    monkeypatch.setenv("ETHOSTRAL_REDIS__URL", "redis://other:6379/0")
    assert Settings().redis.url == "redis://other:6379/0"
    monkeypatch.delenv("ETHOSTRAL_REDIS__URL")
    monkeypatch.delenv("REDIS_URL")
    assert Settings().redis.url is None
