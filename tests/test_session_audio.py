"""Kept audio (``store_audio``) in-process over the real models and a real Redis: uploads,
jobs and live streams keep their audio, ``GET``/``HEAD /sessions/{id}/audio`` serve it
with byte ranges, and it is owned, expired and deleted with its session."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import redis
from conftest import require_data
from fastapi.testclient import TestClient
from live_server import serving
from media import encode
from starlette.websockets import WebSocketDisconnect

from ethostral_serve import sessions as sessions_module
from ethostral_serve.api.app import create_app
from ethostral_serve.api.auth import Access
from ethostral_serve.api.jobs import Jobs
from ethostral_serve.api.playback import RangeNotSatisfiable, requested_range
from ethostral_serve.api.stream import CLOSE_POLICY
from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.errors import AudioTooLongError, StoreUnavailableError
from ethostral_serve.keys import KeyStore
from ethostral_serve.pipeline.live_stream import LiveStream, StreamParams
from ethostral_serve.playback import PlaybackEncoder
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.schema import Session
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import AuthSettings, JobSettings, Settings

pytestmark = pytest.mark.slow

FAST = {"diarize": "false", "emotion": "false", "language": "en"}
WAIT_S = 120.0  # generous bound on a job of a few seconds of audio (never reached when green)


@pytest.fixture(scope="module")
def jfk() -> np.ndarray:
    """11 s of real speech, 16 kHz mono."""
    return decode_audio(require_data("asr", "jfk") / "jfk.flac").samples


@pytest.fixture(scope="module")
def stream_backends(engine: Any) -> Any:
    from ethostral_serve.backends.stream import LocalStreamBackends
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad

    return LocalStreamBackends(SileroStreamingVad(), engine.model, engine.diarizer)


def _wav(samples: np.ndarray) -> bytes:
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


class Service:
    """An app over the real engine under its own Redis prefix (keys, jobs, streams)."""

    def __init__(
        self,
        engine: Any,
        redis_url: str,
        spool: Path,
        stream_backends: Any = None,
        auth: bool = False,
        ttl_s: int | None = None,
        **limits: Any,
    ) -> None:
        self.prefix = f"t-{uuid.uuid4().hex[:8]}:"
        self.url = redis_url
        self.settings: Settings = engine.settings.model_copy(
            update={
                "auth": AuthSettings(required=auth, key_prefix=self.prefix),
                "jobs": JobSettings(spool_dir=spool, spool_host="test", lease_s=1.0),
                "limits": engine.settings.limits.model_copy(update=limits),
            }
        )
        runner = PipelineRunner.traced(self.settings, engine.vad, engine.diarizer, engine.model)
        self.store = SessionStore(redis_url, key_prefix=f"{self.prefix}session:", ttl_s=ttl_s)
        app = create_app(
            runner,
            self.store,
            self.settings,
            stream_backends=stream_backends,
            access=Access.from_settings(redis_url, self.settings),
            jobs=Jobs.from_settings(redis_url, self.settings),
        )
        self.client = TestClient(app)

    def upload(self, audio: bytes, name: str = "jfk.wav", **form: Any) -> Any:
        headers = form.pop("headers", {})
        files = {"file": (name, audio, "application/octet-stream")}
        return self.client.post("/transcribe", files=files, data={**FAST, **form}, headers=headers)

    def raw(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def keys_of(self, session_id: str) -> set[bytes]:
        """Every Redis key under this service's prefix that names the session."""
        with self.raw() as r:
            return {k for k in r.keys(f"{self.prefix}*") if session_id.encode() in k}

    def new_key(self, name: str) -> dict[str, str]:
        """A new API key's headers."""

        async def create() -> str:
            keys = KeyStore(self.url, prefix=self.prefix)
            try:
                return (await keys.create(name))[1]
            finally:
                await keys.aclose()

        return {"Authorization": f"Bearer {asyncio.run(create())}"}


@pytest.fixture
def make_service(engine: Any, redis_url: str, tmp_path: Path) -> Iterator[Callable[..., Service]]:
    made: list[Service] = []

    def make(**kw: Any) -> Service:
        s = Service(engine, redis_url, tmp_path / f"spool{len(made)}", **kw)
        s.client.__enter__()
        made.append(s)
        return s

    yield make
    for s in made:
        s.client.__exit__(None, None, None)


def _envelope(samples: np.ndarray, frame: int = 800) -> np.ndarray:
    """RMS of each 50 ms frame."""
    n = len(samples) // frame
    return np.sqrt(np.mean(samples[: n * frame].reshape(n, frame) ** 2, axis=1))


def assert_plays_like(data: bytes, original: np.ndarray, duration_ms: int) -> None:
    """``data`` is Ogg/Opus, mono, as long as the session, and sounds like ``original``
    (the loudness of each 50 ms follows it)."""
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name == "ogg"
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus"
        assert stream.codec_context.channels == 1
    kept = decode_audio(data).samples
    assert abs(1000 * len(kept) / SAMPLE_RATE - duration_ms) <= 30
    a, b = _envelope(kept), _envelope(original)
    n = min(len(a), len(b))
    assert np.corrcoef(a[:n], b[:n])[0, 1] > 0.95


def test_an_upload_keeps_its_audio_and_serves_it_whole(
    make_service: Callable[..., Service], jfk: np.ndarray
) -> None:
    s = make_service()
    stereo_video = encode(np.stack([jfk, jfk]), SAMPLE_RATE, "mp4", "aac", "fltp", True)
    r = s.upload(stereo_video, "jfk.mp4", store_audio="true")
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["has_audio"] is True
    assert s.client.get(f"/sessions/{session['id']}").json() == session
    listed = s.client.get("/sessions").json()["sessions"]
    assert [x["has_audio"] for x in listed if x["id"] == session["id"]] == [True]

    audio = s.client.get(f"/sessions/{session['id']}/audio")
    assert audio.status_code == 200
    assert audio.headers["content-type"] == "audio/ogg"
    assert audio.headers["accept-ranges"] == "bytes"
    assert audio.headers["cache-control"].startswith("private")
    assert int(audio.headers["content-length"]) == len(audio.content)
    assert audio.headers["content-disposition"] == f'inline; filename="{session["id"]}.ogg"'
    assert_plays_like(audio.content, jfk, session["duration_ms"])
    # not the upload: the decoded mono audio, compact (24 kbit/s Opus)
    assert len(audio.content) < len(stereo_video) / 2
    assert len(audio.content) < 24_000 / 8 * 11 * 1.3
    with s.raw() as raw:
        assert raw.get(s.store.audio_key(session["id"])) == audio.content


def test_without_store_audio_nothing_is_kept_and_the_404_says_so(
    make_service: Callable[..., Service], jfk: np.ndarray
) -> None:
    s = make_service()
    r = s.upload(_wav(jfk))
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["has_audio"] is False
    assert s.keys_of(session["id"]) == {
        f"{s.prefix}session:{session['id']}".encode()
    }  # the session, and no audio beside it
    for method in ("GET", "HEAD"):
        got = s.client.request(method, f"/sessions/{session['id']}/audio")
        assert got.status_code == 404
    detail = s.client.get(f"/sessions/{session['id']}/audio").json()["detail"]
    assert "not kept" in detail and "store_audio" in detail
    for sid in (str(uuid.uuid4()), "not-a-uuid"):
        missing = s.client.get(f"/sessions/{sid}/audio")
        assert missing.status_code == 404
        assert "no session" in missing.json()["detail"]
        assert s.client.head(f"/sessions/{sid}/audio").status_code == 404


def test_ranges_head_and_chunked_reads(
    make_service: Callable[..., Service], jfk: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = make_service()
    session = s.upload(_wav(jfk), store_audio="true").json()
    url = f"/sessions/{session['id']}/audio"
    whole = s.client.get(url).content
    size = len(whole)

    def get(value: str, **headers: str) -> Any:
        return s.client.get(url, headers={"Range": value, **headers})

    for value, start, end in [
        ("bytes=0-99", 0, 99),
        ("bytes=100-", 100, size - 1),
        ("bytes=-50", size - 50, size - 1),
        (f"bytes={size - 1}-{size + 1000}", size - 1, size - 1),  # clipped to the end
        (f"bytes=-{size * 2}", 0, size - 1),
        ("BYTES = 7-7", 7, 7),
    ]:
        r = get(value)
        assert r.status_code == 206, (value, r.text)
        assert r.content == whole[start : end + 1], value
        assert r.headers["content-range"] == f"bytes {start}-{end}/{size}"
        assert r.headers["content-length"] == str(end - start + 1)
        assert r.headers["content-type"] == "audio/ogg"
        assert r.headers["accept-ranges"] == "bytes"
    for value in (f"bytes={size}-", "bytes=-0", "bytes=5-2", "bytes=abc", "bytes=", "bytes=1-2-3"):
        r = get(value)
        assert r.status_code == 416, (value, r.status_code)
        assert r.headers["content-range"] == f"bytes */{size}"
        assert r.json()["detail"]
    # another unit, several ranges, or an If-Range we cannot match: the whole file
    for r in (get("items=0-1"), get("bytes=0-1, 5-6"), get("bytes=0-1", **{"If-Range": '"x"'})):
        assert r.status_code == 200 and r.content == whole
        assert "content-range" not in r.headers

    head = s.client.head(url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(size)
    assert head.headers["content-type"] == "audio/ogg"
    head = s.client.head(url, headers={"Range": "bytes=10-19"})
    assert head.status_code == 206 and head.content == b""
    assert head.headers["content-range"] == f"bytes 10-19/{size}"
    assert head.headers["content-length"] == "10"
    assert s.client.head(url, headers={"Range": f"bytes={size}-"}).status_code == 416

    # read from Redis a chunk at a time: the same bytes, whole or in part
    monkeypatch.setattr(sessions_module, "AUDIO_CHUNK_BYTES", 1000)
    assert s.client.get(url).content == whole
    assert get("bytes=1500-4321").content == whole[1500:4322]


def test_requested_range_follows_rfc_9110() -> None:
    assert requested_range(None, 100) is None
    assert requested_range("bytes=0-0", 100) == requested_range("bytes=-100", 1)
    assert requested_range("bytes=90-", 100).length == 10  # type: ignore[union-attr]
    assert requested_range("bytes=0-1,,", 100).length == 2  # type: ignore[union-attr]
    assert requested_range("bytes=200-300, 0-1", 100) is None  # several: all of it
    with pytest.raises(RangeNotSatisfiable, match="outside"):
        requested_range("bytes=200-300, 400-", 100)
    with pytest.raises(RangeNotSatisfiable, match="ends before it starts"):
        requested_range("bytes=9-3", 100)


def test_delete_and_expiry_take_the_audio_with_the_session(
    make_service: Callable[..., Service], jfk: np.ndarray
) -> None:
    s = make_service(ttl_s=3600)
    session = s.upload(_wav(jfk), store_audio="true").json()
    sid = session["id"]
    audio_key = s.store.audio_key(sid)
    with s.raw() as raw:
        session_ttl, audio_ttl = raw.ttl(s.store.key(sid)), raw.ttl(audio_key)
    assert 3500 < audio_ttl <= 3600 and abs(audio_ttl - session_ttl) <= 1
    assert s.client.delete(f"/sessions/{sid}").status_code == 204
    assert s.keys_of(sid) == set()
    gone = s.client.get(f"/sessions/{sid}/audio")
    assert gone.status_code == 404 and "no session" in gone.json()["detail"]


def test_saving_a_session_again_without_audio_drops_its_audio(redis_url: str) -> None:
    store = SessionStore(redis_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}:session:")
    session = Session(filename="a.wav", language="en", duration_ms=1000, has_audio=True)

    async def go() -> tuple[int, int]:
        try:
            await store.save(session, audio=b"OggS...")
            first = (await store.audio(session.id)).size
            with pytest.raises(ValueError, match="has_audio"):
                await store.save(session)  # says it has audio, gives none
            with pytest.raises(ValueError, match="has_audio"):
                await store.save(session.model_copy(update={"has_audio": False}), audio=b"x")
            await store.save(session.model_copy(update={"has_audio": False}))
            with pytest.raises(sessions_module.AudioNotKeptError):
                await store.audio(session.id)
            return first, await store._client().exists(store.audio_key(session.id))
        finally:
            await store.aclose()

    assert asyncio.run(go()) == (7, 0)


def test_sessions_stored_before_has_audio_still_load(
    make_service: Callable[..., Service],
) -> None:
    s = make_service()
    sid = str(uuid.uuid4())
    old = Session(id=sid, filename="old.wav", language="en", duration_ms=5).model_dump()
    del old["has_audio"]
    import json

    with s.raw() as raw:
        raw.set(s.store.key(sid), json.dumps(old))
    got = s.client.get(f"/sessions/{sid}")
    assert got.status_code == 200 and got.json()["has_audio"] is False
    assert "not kept" in s.client.get(f"/sessions/{sid}/audio").json()["detail"]


def test_audio_belongs_to_the_key_that_made_it(
    make_service: Callable[..., Service], jfk: np.ndarray
) -> None:
    s = make_service(auth=True)
    a, b = s.new_key("a"), s.new_key("b")
    session = s.upload(_wav(jfk), store_audio="true", headers=a).json()
    url = f"/sessions/{session['id']}/audio"
    assert s.client.get(url, headers=a).status_code == 200
    other = s.client.get(url, headers=b)
    assert other.status_code == 404 and "no session" in other.json()["detail"]
    assert s.client.head(url, headers=b).status_code == 404
    assert s.client.get(url, headers=b | {"Range": "bytes=0-9"}).status_code == 404
    assert s.client.get(url).status_code == 401
    assert s.client.delete(f"/sessions/{session['id']}", headers=b).status_code == 404
    assert s.store.audio_key(session["id"]).encode() in s.keys_of(session["id"])


def test_an_async_job_keeps_its_audio(
    make_service: Callable[..., Service], jfk: np.ndarray
) -> None:
    s = make_service()
    r = s.upload(_wav(jfk), store_audio="true", **{"async": "true"})
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    deadline = time.monotonic() + WAIT_S
    while (got := s.client.get(f"/sessions/{job_id}")).status_code == 202:
        assert time.monotonic() < deadline, got.text
        time.sleep(0.2)
    assert got.status_code == 200 and got.json()["has_audio"] is True
    audio = s.client.get(f"/sessions/{job_id}/audio")
    assert audio.status_code == 200
    assert_plays_like(audio.content, jfk, got.json()["duration_ms"])
    # a job without store_audio keeps none
    plain = s.upload(_wav(jfk), **{"async": "true"}).json()["id"]
    while (got := s.client.get(f"/sessions/{plain}")).status_code == 202:
        assert time.monotonic() < deadline, got.text
        time.sleep(0.2)
    assert got.json()["has_audio"] is False
    assert "not kept" in s.client.get(f"/sessions/{plain}/audio").json()["detail"]


def test_audio_over_the_bound_is_refused_before_any_work(
    make_service: Callable[..., Service], jfk: np.ndarray
) -> None:
    s = make_service(max_stored_audio_s=5.0)
    r = s.upload(_wav(jfk), store_audio="true")
    assert r.status_code == 413
    detail = r.json()["detail"]
    assert "store_audio" in detail and "MAX_STORED_AUDIO_S" in detail
    with s.raw() as raw:
        assert raw.keys(f"{s.prefix}session:*") == []
    # a job the same: refused when submitted, not accepted and failed later
    job = s.upload(_wav(jfk), store_audio="true", **{"async": "true"})
    assert job.status_code == 413, job.text
    assert job.json()["detail"] == detail
    with s.raw() as raw:
        assert raw.keys(f"{s.prefix}job:*") == [] and raw.keys(f"{s.prefix}session:*") == []
    spool = s.settings.jobs.spool_dir
    assert spool is not None and not any(p.is_file() for p in spool.rglob("*"))
    # the same upload without store_audio is transcribed
    assert s.upload(_wav(jfk)).status_code == 200


def test_a_job_longer_than_any_run_takes_is_refused_when_submitted(
    make_service: Callable[..., Service], jfk: np.ndarray
) -> None:
    s = make_service(max_duration_s=5.0)
    job = s.upload(_wav(jfk), **{"async": "true"})
    assert job.status_code == 413, job.text
    assert job.json()["detail"] == "audio is 11.0 s long; the limit is 5 s"
    with s.raw() as raw:
        assert raw.keys(f"{s.prefix}job:*") == []


def test_a_file_whose_header_gives_no_length_is_checked_when_decoded(tmp_path: Path) -> None:
    from ethostral_serve.audio import header_duration_s
    from ethostral_serve.runner import check_header_length
    from ethostral_serve.settings import LimitSettings

    raw = tmp_path / "noise.bin"
    raw.write_bytes(b"not media at all" * 100)
    assert header_duration_s(raw) is None
    check_header_length(raw, LimitSettings(max_duration_s=1.0), keep_audio=True)  # unknown
    wav = tmp_path / "a.wav"
    wav.write_bytes(_wav(np.zeros(2 * SAMPLE_RATE, np.float32)))
    assert header_duration_s(wav) == pytest.approx(2.0, abs=0.01)
    check_header_length(wav, LimitSettings(max_duration_s=2.5), keep_audio=False)
    kept = LimitSettings(max_duration_s=10.0, max_stored_audio_s=1.0)
    with pytest.raises(AudioTooLongError, match=r"2\.0 s long; the limit is 1 s of audio a se"):
        check_header_length(wav, kept, keep_audio=True)


@contextmanager
def _redis_config(raw: redis.Redis, name: str, value: int) -> Iterator[None]:
    """Redis's ``name`` set to ``value`` for the block, then back to what it was."""
    before = raw.config_get(name)[name]
    raw.config_set(name, value)
    try:
        yield
    finally:
        raw.config_set(name, before)


def test_redis_settings_a_test_changes_go_back_to_what_they_were(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as raw:
        original = raw.config_get("maxmemory")["maxmemory"]
        raw.config_set("maxmemory", 123 << 20)  # not Redis's default, nor what a test sets
        try:
            with _redis_config(raw, "maxmemory", 1):
                assert raw.config_get("maxmemory")["maxmemory"] == "1"
            assert raw.config_get("maxmemory")["maxmemory"] == str(123 << 20)
        finally:
            raw.config_set("maxmemory", original)


def test_a_store_that_refuses_the_write_keeps_nothing(
    make_service: Callable[..., Service], jfk: np.ndarray, redis_url: str
) -> None:
    s = make_service()
    with s.raw() as raw:
        with _redis_config(raw, "maxmemory", 1):  # every write refused: OOM, MULTI discarded
            r = s.upload(_wav(jfk), store_audio="true")
        assert r.status_code == 503, r.text
        assert "unavailable" in r.json()["detail"]
        assert raw.keys(f"{s.prefix}session:*") == []


def test_a_connection_lost_mid_transaction_stores_neither_session_nor_audio(
    redis_url: str,
) -> None:
    """The audio is written after the session in one MULTI: a value Redis will not take
    (over proto-max-bulk-len) drops the connection after the session's SET was queued;
    the transaction is discarded, so no session points to missing audio."""
    prefix = f"t-{uuid.uuid4().hex[:8]}:session:"
    store = SessionStore(redis_url, key_prefix=prefix)
    session = Session(filename="a.wav", language="en", duration_ms=1000, has_audio=True)
    with redis.Redis.from_url(redis_url) as raw:
        with (
            _redis_config(raw, "proto-max-bulk-len", 1 << 20),  # the smallest Redis allows
            pytest.raises(StoreUnavailableError),
        ):
            asyncio.run(_save_and_close(store, session, b"\0" * (2 << 20)))
        assert raw.keys(f"{prefix}*") == []
    asyncio.run(_save_and_close(store, session, b"\0" * (2 << 20)))  # and it works again
    with redis.Redis.from_url(redis_url) as raw:
        assert raw.strlen(store.audio_key(session.id)) == 2 << 20


async def _save_and_close(store: SessionStore, session: Session, audio: bytes) -> None:
    try:
        await store.save(session, audio=audio)
    finally:
        await store.aclose()


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _stream(client: TestClient, query: str, samples: np.ndarray) -> tuple[list[dict], int]:
    """Send ``samples`` in 100 ms frames, then stop; every event and the close code."""
    events: list[dict] = []
    with client.websocket_connect(f"/transcribe/stream?{query}") as ws:
        for i in range(0, len(samples), 1600):
            ws.send_bytes(_pcm16(samples[i : i + 1600]))
        ws.send_json({"type": "stop"})
        try:
            while True:
                events.append(ws.receive_json())
        except WebSocketDisconnect as closed:
            return events, closed.code


def test_a_live_stream_keeps_its_audio(
    make_service: Callable[..., Service], stream_backends: Any, jfk: np.ndarray
) -> None:
    s = make_service(stream_backends=stream_backends)
    events, code = _stream(s.client, "language=en&store_audio=true", jfk)
    assert code == 1000 and events[-1]["type"] == "session", events[-1]
    session = s.client.get(f"/sessions/{events[-1]['session_id']}").json()
    assert session["has_audio"] is True and session["segments"]
    audio = s.client.get(f"/sessions/{session['id']}/audio")
    assert audio.status_code == 200
    assert_plays_like(audio.content, jfk, session["duration_ms"])
    events, _ = _stream(s.client, "language=en&diarize=false", jfk[: 3 * SAMPLE_RATE])
    plain = events[-1]["session_id"]
    assert s.client.get(f"/sessions/{plain}").json()["has_audio"] is False
    assert s.client.get(f"/sessions/{plain}/audio").status_code == 404


def test_a_stream_over_the_bound_is_closed_with_what_came_before_kept(
    make_service: Callable[..., Service], stream_backends: Any, jfk: np.ndarray
) -> None:
    s = make_service(stream_backends=stream_backends, max_stored_audio_s=4.0)
    events, code = _stream(s.client, "language=en&diarize=false&store_audio=true", jfk)
    assert code == CLOSE_POLICY
    error = events[-1]
    assert error["type"] == "error" and "store_audio" in error["detail"], error
    session = s.client.get(f"/sessions/{error['session_id']}").json()
    # the audio up to the bound is stored, with its audio, however the frames were read
    assert session["has_audio"] is True and abs(session["duration_ms"] - 4000) <= 20
    audio = s.client.get(f"/sessions/{session['id']}/audio")
    assert_plays_like(audio.content, jfk, session["duration_ms"])


class _GatedEncode:
    """Wraps an encoder's PyAV stream: the encoding of the next frame stops, inside the
    encoder, until the test lets it go (a push under way on a stream thread)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.inside = threading.Event()
        self.release = threading.Event()
        self.armed = True

    def encode(self, frame: Any) -> Any:
        if frame is not None and self.armed:
            self.armed = False
            self.inside.set()
            assert self.release.wait(WAIT_S)
        return self._stream.encode(frame)


class _AnnouncingLock:
    """Wraps a lock: says when a thread starts waiting for it."""

    def __init__(self, lock: Any) -> None:
        self._lock = lock
        self.waiting = threading.Event()

    def __enter__(self) -> Any:
        self.waiting.set()
        return self._lock.__enter__()

    def __exit__(self, *exc: object) -> Any:
        return self._lock.__exit__(*exc)


def _tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    """Run ``fn`` on a thread; its result or exception lands in the list."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # reported to the test
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _joined(thread: threading.Thread, out: list[Any]) -> Any:
    thread.join(WAIT_S)
    assert not thread.is_alive() and len(out) == 1
    if isinstance(out[0], BaseException):
        raise out[0]
    return out[0]


def test_finishing_waits_for_a_push_under_way_on_another_thread() -> None:
    """A stream cancelled mid-step is stored on the event loop while its step still
    pushes on a stream thread: the finish waits for the push, and both are in the file."""
    encoder = PlaybackEncoder()
    encoder.push(_tone(1.0))
    gate = _GatedEncode(encoder._stream)
    encoder._stream = gate
    lock = encoder._lock = _AnnouncingLock(encoder._lock)
    pushing, pushed = _in_thread(lambda: encoder.push(_tone(1.0, 880.0)))
    assert gate.inside.wait(WAIT_S)  # the push holds the encoder, mid-encode
    lock.waiting.clear()
    finishing, finished = _in_thread(encoder.finish)
    assert lock.waiting.wait(WAIT_S)  # the finish is at the lock the push holds
    assert not encoder.finished
    gate.release.set()
    _joined(pushing, pushed)
    data = _joined(finishing, finished)
    assert encoder.finish() == data
    kept = decode_audio(data).samples
    assert abs(len(kept) / SAMPLE_RATE - 2.0) <= 0.03
    assert encoder.offer(_tone(1.0)) is False  # afterwards: dropped, the file unchanged
    with pytest.raises(RuntimeError, match="finished"):
        encoder.push(_tone(1.0))
    assert encoder.finish() == data


class _CountingVad:
    """Stream backends with a VAD that hears nothing, and may stop in a step until the
    test lets it go; no model is called (nothing becomes due)."""

    def __init__(self) -> None:
        self.inside = threading.Event()
        self.release = threading.Event()
        self.gated = False

    def new_vad_state(self) -> int:
        return 0

    def vad_step(self, samples: np.ndarray, state: int) -> tuple[np.ndarray, int]:
        if self.gated:
            self.gated = False
            self.inside.set()
            assert self.release.wait(WAIT_S)
        total = state + len(samples)
        return np.zeros(total // 512 - state // 512, dtype=np.float32), total


def _store_audio_stream(vad: _CountingVad) -> LiveStream:
    params = StreamParams(language="en", diarize=False, emotion=False, store_audio=True)
    return LiveStream(params, vad, Settings(), language="en")  # type: ignore[arg-type]


def test_a_stream_stored_while_a_step_pushes_keeps_audio_and_session_together() -> None:
    vad = _CountingVad()
    live = _store_audio_stream(vad)
    live.step(_tone(1.0))
    gate = _GatedEncode(live._playback._stream)  # type: ignore[union-attr]
    live._playback._stream = gate  # type: ignore[union-attr]
    stepping, stepped = _in_thread(lambda: live.step(_tone(1.0, 880.0)))
    assert gate.inside.wait(WAIT_S)
    storing, stored = _in_thread(live.stored)
    gate.release.set()
    _joined(stepping, stepped)  # no "encoder is finished" in the step
    session, audio = _joined(storing, stored)
    assert session.has_audio is True and audio is not None
    assert abs(len(decode_audio(audio).samples) / SAMPLE_RATE - 2.0) <= 0.03
    live.step(_tone(1.0))  # audio after the stream was stored: not kept, no error
    again, same = live.stored()
    assert again.has_audio is True and same == audio and again.id == session.id


def test_a_stream_stored_before_its_first_audio_is_encoded_says_it_has_none() -> None:
    """Stored while the first step is still in its VAD: no audio yet, and the session
    says so (a session claiming audio without any would be refused by the store); the
    audio that comes after is kept, and storing again gives both."""
    vad = _CountingVad()
    live = _store_audio_stream(vad)
    vad.gated = True
    stepping, stepped = _in_thread(lambda: live.step(_tone(1.0)))
    assert vad.inside.wait(WAIT_S)
    session, audio = live.stored()
    assert session.has_audio is False and audio is None
    vad.release.set()
    _joined(stepping, stepped)
    session, audio = live.stored()
    assert session.has_audio is True and audio is not None
    assert abs(len(decode_audio(audio).samples) / SAMPLE_RATE - 1.0) <= 0.03
    plain = LiveStream(StreamParams(diarize=False), _CountingVad(), Settings())  # type: ignore[arg-type]
    plain.step(_tone(1.0))
    assert plain.stored()[0].has_audio is False and plain.stored()[1] is None


CHROMIUM = Path("/usr/bin/chromium")


def test_chromium_plays_and_seeks_the_kept_audio(
    engine: Any, redis_url: str, jfk: np.ndarray
) -> None:
    """A browser's <audio> element over a real HTTP server: it reads the duration, seeks
    with Range requests and plays from where it seeked to."""
    import httpx

    playwright = pytest.importorskip("playwright.sync_api", reason="pip install -e '.[dev]'")
    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    runner = PipelineRunner.traced(engine.settings, engine.vad, engine.diarizer, engine.model)
    store = SessionStore(redis_url, key_prefix=f"t-{uuid.uuid4().hex[:8]}:session:")
    app = create_app(runner, store, engine.settings)
    statuses: list[tuple[str | None, int]] = []

    @app.middleware("http")
    async def record(request: Any, call_next: Any) -> Any:
        response = await call_next(request)
        if request.url.path.endswith("/audio"):
            statuses.append((request.headers.get("range"), response.status_code))
        return response

    with serving(app) as base:
        r = httpx.post(
            f"{base}/transcribe",
            files={"file": ("jfk.wav", _wav(jfk))},
            data={**FAST, "store_audio": "true"},
            timeout=WAIT_S,
        )
        assert r.status_code == 200, r.text
        session = r.json()
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=str(CHROMIUM),
                args=["--no-sandbox", "--autoplay-policy=no-user-gesture-required"],
            )
            try:
                page = browser.new_page()
                page.goto(f"{base}/healthz")  # an http origin for the page
                src = f"{base}/sessions/{session['id']}/audio"
                page.set_content(f'<audio id="a" preload="auto" src="{src}"></audio>')
                page.wait_for_function("document.getElementById('a').readyState >= 1")
                duration = page.evaluate("document.getElementById('a').duration")
                assert abs(duration - session["duration_ms"] / 1000) < 0.05
                seeked = page.evaluate(
                    """() => new Promise((resolve, reject) => {
                        const a = document.getElementById('a');
                        a.muted = true;
                        a.addEventListener('seeked', () => resolve(a.currentTime), {once: true});
                        a.addEventListener('error', () => reject(a.error.message), {once: true});
                        a.currentTime = 7.0;
                    })"""
                )
                assert abs(seeked - 7.0) < 0.05
                page.evaluate("document.getElementById('a').play()")
                page.wait_for_function(
                    "document.getElementById('a').currentTime > 7.3", timeout=WAIT_S * 1000
                )
                assert page.evaluate("document.getElementById('a').error") is None
            finally:
                browser.close()
    assert any(status == 206 and value for value, status in statuses), statuses
