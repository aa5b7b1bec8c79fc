"""SessionStore against a real ``redis-server``, and the embedded Redis surviving restarts."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import socket
import threading
import time
import uuid
import warnings
from datetime import datetime
from pathlib import Path
from typing import TypeVar

import pytest
import redis
from redis_server import free_port, run

from ethostral_serve.embedded_redis import EmbeddedRedis, resolve_redis_url
from ethostral_serve.errors import (
    CorruptSessionError,
    InvalidRequestError,
    SessionNotFoundError,
    StoreUnavailableError,
)
from ethostral_serve.schema import Emotion, Segment, Session, Word
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import RedisSettings, Settings

T = TypeVar("T")


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


# --- owners and listing ----------------------------------------------------------------


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so listings never see other tests' sessions."""
    return f"t-list-{uuid.uuid4().hex[:8]}:"


def made_at(created_at: str) -> Session:
    """A new session (fresh id) created at ``created_at``."""
    return make_session().model_copy(update={"created_at": created_at})


def at_second(second: int) -> str:
    return f"2030-01-01T00:00:{second:02d}.000+00:00"


def list_all(
    store: SessionStore, owner: str | None = None, limit: int = 3
) -> tuple[list[str], list[int]]:
    """Every id, following ``next_cursor`` to the end; and each page's size."""

    async def go() -> tuple[list[str], list[int]]:
        ids: list[str] = []
        sizes: list[int] = []
        cursor = None
        for _ in range(100):
            page = await store.list(owner=owner, limit=limit, cursor=cursor)
            ids += [s.id for s in page.sessions]
            sizes.append(len(page.sessions))
            if page.next_cursor is None:
                return ids, sizes
            cursor = page.next_cursor
        raise AssertionError("the listing never ended")

    return run(go(), store)


def save_all(store: SessionStore, sessions: list[Session], owner: str | None = None) -> None:
    async def go() -> None:
        for session in sessions:
            await store.save(session, owner=owner)

    run(go(), store)


def test_another_keys_session_is_not_found_and_stays(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    store = SessionStore(redis_url, key_prefix=prefix)
    session = make_session()
    run(store.save(session, owner="key_a"), store)
    assert raw.get(f"{prefix}{session.id}:owner") == b"key_a"

    with pytest.raises(SessionNotFoundError, match=session.id) as info:
        run(store.get(session.id, owner="key_b"), store)
    assert info.value.status_code == 404
    with pytest.raises(SessionNotFoundError):
        run(store.delete(session.id, owner="key_b"), store)
    assert raw.exists(f"{prefix}{session.id}")
    assert raw.zscore(f"{prefix}index", session.id) is not None
    assert raw.zscore(f"{prefix}index:key_a", session.id) is not None

    assert run(store.get(session.id, owner="key_a"), store) == session
    assert run(store.get(session.id), store) == session  # auth off: sees every session

    run(store.delete(session.id, owner="key_a"), store)
    assert not raw.exists(f"{prefix}{session.id}", f"{prefix}{session.id}:owner")
    assert raw.zscore(f"{prefix}index", session.id) is None
    assert raw.zscore(f"{prefix}index:key_a", session.id) is None


def test_auth_off_deletes_any_keys_session(redis_url: str, raw: redis.Redis, prefix: str) -> None:
    store = SessionStore(redis_url, key_prefix=prefix)
    session = make_session()
    run(store.save(session, owner="key_a"), store)
    run(store.delete(session.id), store)
    assert not raw.exists(f"{prefix}{session.id}", f"{prefix}{session.id}:owner")
    assert raw.zscore(f"{prefix}index:key_a", session.id) is None


def test_a_session_without_owner_is_seen_only_with_auth_off(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    store = SessionStore(redis_url, key_prefix=prefix)
    session = make_session()
    run(store.save(session), store)
    assert not raw.exists(f"{prefix}{session.id}:owner")

    with pytest.raises(SessionNotFoundError):
        run(store.get(session.id, owner="key_a"), store)
    with pytest.raises(SessionNotFoundError):
        run(store.delete(session.id, owner="key_a"), store)
    assert run(store.list(owner="key_a"), store).sessions == []

    assert run(store.get(session.id), store) == session
    assert [s.id for s in run(store.list(), store).sessions] == [session.id]


def test_owner_ttl_matches_the_sessions(redis_url: str, raw: redis.Redis, prefix: str) -> None:
    store = SessionStore(redis_url, key_prefix=prefix, ttl_s=600)
    session = make_session()
    run(store.save(session, owner="key_a"), store)
    assert 590 <= raw.ttl(f"{prefix}{session.id}:owner") <= 600


@pytest.mark.parametrize("limit", [1, 2, 3, 6, 7, 8, 100])
def test_list_pages_newest_first_to_the_end(redis_url: str, prefix: str, limit: int) -> None:
    sessions = [made_at(at_second(s)) for s in (4, 1, 6, 3, 7, 2, 5)]  # saved out of order
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, sessions)
    newest_first = [s.id for s in sorted(sessions, key=lambda s: s.created_at, reverse=True)]

    ids, sizes = list_all(store, limit=limit)
    assert ids == newest_first
    assert sizes[:-1] == [limit] * (len(sizes) - 1)  # only the last page is short
    assert 1 <= sizes[-1] <= limit  # ... and never empty
    assert len(sizes) == -(-len(sessions) // limit)


def test_a_page_holds_whole_sessions(redis_url: str, prefix: str) -> None:
    session = made_at(at_second(1))
    store = SessionStore(redis_url, key_prefix=prefix)
    run(store.save(session), store)
    page = run(store.list(), store)
    assert page.sessions == [session]
    assert page.next_cursor is None


def test_an_empty_listing(redis_url: str, prefix: str) -> None:
    store = SessionStore(redis_url, key_prefix=prefix)
    page = run(store.list(), store)
    assert page.sessions == [] and page.next_cursor is None


def test_sessions_made_at_the_same_time_page_exactly_once(redis_url: str, prefix: str) -> None:
    same = at_second(5)
    sessions = [made_at(at_second(9)), made_at(at_second(1))] + [made_at(same) for _ in range(7)]
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, sessions)
    # equal times are ordered by id, descending
    expected = [s.id for s in sorted(sessions, key=lambda s: (s.created_at, s.id), reverse=True)]

    for limit in (1, 2, 3, 4):
        ids, _ = list_all(store, limit=limit)
        assert ids == expected, f"limit={limit}"


def test_sessions_deleted_between_pages_do_not_break_paging(redis_url: str, prefix: str) -> None:
    sessions = [made_at(at_second(s)) for s in range(1, 8)] + [made_at(at_second(3))]
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, sessions)
    expected = [s.id for s in sorted(sessions, key=lambda s: (s.created_at, s.id), reverse=True)]

    async def go() -> list[str]:
        first = await store.list(limit=3)
        assert [s.id for s in first.sessions] == expected[:3]
        # the cursor's own session, and one that would be on the next page
        await store.delete(expected[2])
        await store.delete(expected[4])
        ids = [s.id for s in first.sessions]
        cursor = first.next_cursor
        while cursor is not None:
            page = await store.list(limit=3, cursor=cursor)
            ids += [s.id for s in page.sessions]
            cursor = page.next_cursor
        return ids

    ids = run(go(), store)
    assert ids == expected[:3] + expected[3:4] + expected[5:]


def test_a_deleted_cursor_session_among_equal_times(redis_url: str, prefix: str) -> None:
    sessions = [made_at(at_second(5)) for _ in range(6)]
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, sessions)
    expected = sorted((s.id for s in sessions), reverse=True)

    async def go() -> list[str]:
        first = await store.list(limit=2)
        await store.delete(first.sessions[-1].id)
        rest = await store.list(limit=10, cursor=first.next_cursor)
        assert rest.next_cursor is None
        return [s.id for s in first.sessions + rest.sessions]

    assert run(go(), store) == expected


def test_listing_by_owner_shows_only_that_keys_sessions(redis_url: str, prefix: str) -> None:
    mine = [made_at(at_second(s)) for s in (1, 3, 5, 7)]
    theirs = [made_at(at_second(s)) for s in (2, 6)]
    nobodys = [made_at(at_second(4))]
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, mine, owner="key_a")
    save_all(store, theirs, owner="key_b")
    save_all(store, nobodys)

    def newest_first(sessions: list[Session]) -> list[str]:
        return [s.id for s in sorted(sessions, key=lambda s: s.created_at, reverse=True)]

    assert list_all(store, owner="key_a", limit=3)[0] == newest_first(mine)
    assert list_all(store, owner="key_b", limit=3)[0] == newest_first(theirs)
    assert list_all(store, owner="key_c", limit=3)[0] == []
    assert list_all(store, limit=3)[0] == newest_first(mine + theirs + nobodys)


def test_a_cursor_of_another_listing_pages_on_from_its_position(
    redis_url: str, prefix: str
) -> None:
    mine = [made_at(at_second(s)) for s in (1, 3, 5)]
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, mine, owner="key_a")
    save_all(store, [made_at(at_second(s)) for s in (2, 4)], owner="key_b")

    async def go() -> list[str]:
        everyone = await store.list(limit=2)  # 5 s (key_a), 4 s (key_b)
        page = await store.list(owner="key_a", cursor=everyone.next_cursor)
        return [s.id for s in page.sessions]

    assert run(go(), store) == [mine[1].id, mine[0].id]  # never key_b's


@pytest.mark.parametrize(
    "cursor",
    [
        "garbage",
        "123",
        "123_",
        "_" + "0" * 8 + "-0000-0000-0000-" + "0" * 12,
        "12_not-a-uuid",
        "-5_00000000-0000-0000-0000-000000000000",
        "1.5_00000000-0000-0000-0000-000000000000",
        "abc_00000000-0000-0000-0000-000000000000",
        "12_00000000-0000-0000-0000-000000000000 ",
        "12_00000000-0000-0000-0000-00000000000G",
    ],
)
def test_a_bad_cursor_is_an_invalid_request(redis_url: str, prefix: str, cursor: str) -> None:
    store = SessionStore(redis_url, key_prefix=prefix)
    run(store.save(make_session()), store)
    with pytest.raises(InvalidRequestError, match="next_cursor") as info:
        run(store.list(cursor=cursor), store)
    assert info.value.status_code == 422


def test_an_empty_cursor_is_the_first_page(redis_url: str, prefix: str) -> None:
    session = make_session()
    store = SessionStore(redis_url, key_prefix=prefix)
    run(store.save(session), store)
    assert [s.id for s in run(store.list(cursor=""), store).sessions] == [session.id]


def test_a_well_formed_cursor_of_no_session_pages_on_by_time(redis_url: str, prefix: str) -> None:
    sessions = [made_at(at_second(s)) for s in (1, 2, 3)]
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, sessions)
    two_s = int(datetime.fromisoformat(at_second(2)).timestamp() * 1000)
    cursor = f"{two_s}_ffffffff-ffff-ffff-ffff-ffffffffffff"  # above every id at 2 s
    page = run(store.list(cursor=cursor), store)
    assert [s.id for s in page.sessions] == [sessions[1].id, sessions[0].id]


def test_list_limit_must_be_positive(redis_url: str, prefix: str) -> None:
    store = SessionStore(redis_url, key_prefix=prefix)
    with pytest.raises(ValueError, match="limit"):
        run(store.list(limit=0), store)


def test_sessions_stored_before_the_index_are_listed(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    old = [made_at(at_second(s)) for s in (2, 4, 3)]
    for session in old:  # as the code before the index wrote them: a bare SET
        raw.set(f"{prefix}{session.id}", session.model_dump_json())
    raw.set(f"{prefix}not-a-session-id", b"{not json")  # other keys under the prefix
    raw.rpush(f"{prefix}some-list", "x")
    store = SessionStore(redis_url, key_prefix=prefix)
    new = made_at(at_second(1))
    run(store.save(new, owner="key_a"), store)  # a new session before the first listing

    ids, _ = list_all(store, limit=2)
    assert ids == [old[1].id, old[2].id, old[0].id, new.id]
    assert raw.zcard(f"{prefix}index") == 4
    assert raw.get(f"{prefix}index-version") == b"1"
    assert list_all(store, owner="key_a")[0] == [new.id]  # old sessions have no owner
    assert raw.get(f"{prefix}not-a-session-id") == b"{not json"  # left alone

    # ... once: a session written the old way afterwards is not picked up by a new store
    late = made_at(at_second(9))
    raw.set(f"{prefix}{late.id}", late.model_dump_json())
    assert late.id not in list_all(SessionStore(redis_url, key_prefix=prefix))[0]


def test_an_expired_sessions_index_entry_is_skipped_and_dropped(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    sessions = [made_at(at_second(s)) for s in range(1, 8)]
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, sessions, owner="key_a")
    expired = [sessions[6], sessions[5], sessions[4], sessions[2]]  # a whole first page, and one
    for session in expired:  # what a TTL does: the value goes, its index entries stay
        raw.delete(f"{prefix}{session.id}", f"{prefix}{session.id}:owner")
    alive = [sessions[3].id, sessions[1].id, sessions[0].id]

    for owner in ("key_a", None):
        index = f"{prefix}index" + (":key_a" if owner else "")
        assert raw.zcard(index) == 7
        ids, sizes = list_all(store, owner=owner, limit=2)
        assert ids == alive
        assert sizes == [2, 1]
        assert sorted(m.decode() for m in raw.zrange(index, 0, -1)) == sorted(alive)


def test_saving_a_session_again_lists_it_once(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    session = made_at(at_second(1))
    other = made_at(at_second(2))
    store = SessionStore(redis_url, key_prefix=prefix)
    save_all(store, [session, other, session], owner="key_a")
    renamed = session.model_copy(update={"filename": "renamed.wav"})
    run(store.save(renamed, owner="key_a"), store)

    for owner in (None, "key_a"):
        ids, _ = list_all(store, owner=owner, limit=1)
        assert ids == [other.id, session.id]
    assert raw.zcard(f"{prefix}index") == 2
    assert raw.zcard(f"{prefix}index:key_a") == 2
    assert run(store.list(), store).sessions[1].filename == "renamed.wav"


def test_a_session_that_is_not_a_string_is_corrupt(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    sid = str(uuid.uuid4())
    raw.hset(f"{prefix}{sid}", "id", sid)
    store = SessionStore(redis_url, key_prefix=prefix)
    with pytest.raises(CorruptSessionError, match="not a string") as info:
        run(store.get(sid), store)
    assert info.value.status_code == 500
    assert raw.hgetall(f"{prefix}{sid}") == {b"id": sid.encode()}


def test_a_non_string_value_under_a_session_id_does_not_make_listing_unavailable(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    old = made_at(at_second(1))
    raw.set(f"{prefix}{old.id}", old.model_dump_json())
    raw.rpush(f"{prefix}{uuid.uuid4()}", "x")
    store = SessionStore(redis_url, key_prefix=prefix)
    try:
        page = run(store.list(), store)
    except CorruptSessionError:
        return  # the documented error for a stored value that is not a session
    assert [s.id for s in page.sessions] == [old.id]  # or skipped, and the rest listed


def test_delete_while_redis_is_down_leaves_no_unawaited_coroutine() -> None:
    store = SessionStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(StoreUnavailableError):
            run(store.delete(str(uuid.uuid4())), store)
        gc.collect()
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_saving_drops_index_entries_of_sessions_past_their_ttl(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    """With a TTL, expired sessions' entries leave every index the save touches, even
    one that is never listed (the global index, when every caller has a key)."""
    store = SessionStore(redis_url, key_prefix=prefix, ttl_s=600)
    old = make_session().model_copy(
        update={"id": str(uuid.uuid4()), "created_at": "2020-01-01T00:00:00.000+00:00"}
    )
    new = make_session().model_copy(update={"id": str(uuid.uuid4())})

    async def go() -> None:
        await store.save(old, owner="key_a")
        raw.delete(f"{prefix}{old.id}")  # expired meanwhile
        await store.save(new, owner="key_a")

    run(go(), store)
    for index in (f"{prefix}index", f"{prefix}index:key_a"):
        assert [m.decode() for m in raw.zrange(index, 0, -1)] == [new.id]


def test_a_session_saved_long_after_it_began_stays_listed(
    redis_url: str, raw: redis.Redis, prefix: str
) -> None:
    store = SessionStore(redis_url, key_prefix=prefix, ttl_s=600)
    late = make_session().model_copy(
        update={"id": str(uuid.uuid4()), "created_at": "2020-01-01T00:00:00.000+00:00"}
    )
    run(store.save(late), store)
    assert [s.id for s in run(store.list(), store).sessions] == [late.id]
