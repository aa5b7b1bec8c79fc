"""The embedded Redis comes back by itself after it dies, with the sessions it held."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from ethostral_serve.embedded_redis import EmbeddedRedis, RedisWatchdog
from ethostral_serve.errors import StoreUnavailableError
from ethostral_serve.schema import Session
from ethostral_serve.sessions import SessionStore


def _save_then_read(store: SessionStore, session: Session | None, session_id: str) -> Session:
    async def go() -> Session:
        try:
            if session is not None:
                await store.save(session)
            return await store.get(session_id)
        finally:
            await store.aclose()

    return asyncio.run(go())


def _kill(server: EmbeddedRedis) -> None:
    assert server._proc is not None
    os.kill(server._proc.pid, signal.SIGKILL)  # no chance to save on exit
    server._proc.wait(10)


def test_the_watchdog_restarts_a_killed_server_with_its_sessions(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    watchdog = RedisWatchdog(server, down_checks=1)
    try:
        assert not watchdog.check()  # up: nothing to do
        session = Session(filename="kept.wav", language="en", duration_ms=1200)
        # A reply means the write reached the append-only file (the kernel's copy of it),
        # which a killed process cannot take back.
        assert _save_then_read(SessionStore(server.url), session, session.id) == session
        _kill(server)
        with pytest.raises(StoreUnavailableError):
            _save_then_read(SessionStore(server.url, timeout_s=0.5), None, session.id)
        assert watchdog.check()
        assert watchdog.restarts == 1 and server.owner
        assert _save_then_read(SessionStore(server.url), None, session.id) == session
        assert not watchdog.check()
    finally:
        watchdog.stop()
        server.stop()
    assert not server.running


def test_a_server_restarted_by_another_process_is_left_alone(tmp_path: Path) -> None:
    first = EmbeddedRedis(tmp_path).start()
    attached = EmbeddedRedis(tmp_path).start()  # another replica reusing the server
    watchdog = RedisWatchdog(attached, down_checks=1)
    try:
        _kill(first)
        assert first.ensure_running()  # the owner's own watchdog got there first
        assert not watchdog.check()
        assert not attached.owner
    finally:
        watchdog.stop()
        attached.stop()
        first.stop()


def test_a_server_that_cannot_start_is_reported_and_retried(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path, binary="/bin/false", start_timeout_s=1.0)
    watchdog = RedisWatchdog(server, down_checks=1)
    assert not watchdog.check()  # logged, not raised: the next check tries again
    assert watchdog.restarts == 0
    assert not watchdog.check()


def test_the_watchdog_thread_stops_before_the_server_is_stopped(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path).start()
    watchdog = RedisWatchdog(server, every_s=0.05).start()
    watchdog.stop()
    assert watchdog._thread is not None and not watchdog._thread.is_alive()
    server.stop()
    assert not server.running  # nothing brought it back


def test_a_server_is_restarted_only_after_it_failed_several_checks_in_a_row(
    tmp_path: Path,
) -> None:
    server = EmbeddedRedis(tmp_path).start()
    watchdog = RedisWatchdog(server, down_checks=3)
    try:
        _kill(server)
        assert not watchdog.check() and not watchdog.check()  # maybe only busy
        assert watchdog.check()  # the third failure in a row: restarted
        assert server.running
    finally:
        watchdog.stop()
        server.stop()


def test_a_stalled_server_is_killed_before_another_starts_on_its_data(tmp_path: Path) -> None:
    """A server that is alive but answers nothing (here: stopped) must not keep writing
    to the append-only file a new server uses."""
    first = EmbeddedRedis(tmp_path).start()
    attached = EmbeddedRedis(tmp_path).start()  # another replica's view of the same server
    watchdog = RedisWatchdog(attached, down_checks=1)
    session = Session(filename="kept.wav", language="en", duration_ms=900)
    try:
        assert _save_then_read(SessionStore(first.url), session, session.id) == session
        assert first._proc is not None
        stalled = first._proc
        os.kill(stalled.pid, signal.SIGSTOP)
        assert watchdog.check()
        assert stalled.wait(10) == -signal.SIGKILL  # killed, not left running
        assert attached.owner and attached.running
        assert _save_then_read(SessionStore(attached.url), None, session.id) == session
    finally:
        watchdog.stop()
        attached.stop()
        first.stop()
