"""API keys over the real app (FastAPI TestClient), the real models and a real Redis:
who may call, whose sessions they see, and quotas."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from redis_server import redis_server
from speech import Conversation, two_speaker_conversation
from starlette.websockets import WebSocketDisconnect

from ethostral_serve.api.app import create_app
from ethostral_serve.api.auth import Access, Caller
from ethostral_serve.api.stream import CLOSE_QUOTA, CLOSE_UNAUTHORIZED
from ethostral_serve.keys import ApiKey, KeyLimits, KeyStore
from ethostral_serve.quotas import seconds_to_utc_midnight
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import AuthSettings, Settings

pytestmark = pytest.mark.slow

FAST = {"diarize": "false", "emotion": "false", "language": "en"}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def talk() -> Conversation:
    return two_speaker_conversation(turns_each=1)


@pytest.fixture(scope="module")
def stream_backends(engine: Any) -> Any:
    from ethostral_serve.backends.stream import LocalStreamBackends
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad

    return LocalStreamBackends(SileroStreamingVad(), engine.model, engine.diarizer)


class Service:
    """An app with auth on, under its own Redis prefix, and a way to make keys."""

    def __init__(self, engine: Any, stream_backends: Any, redis_url: str) -> None:
        prefix = f"t-{uuid.uuid4().hex[:8]}:"
        self.settings: Settings = engine.settings.model_copy(
            update={"auth": AuthSettings(required=True, key_prefix=prefix)}
        )
        self.url = redis_url
        self.prefix = prefix
        self.keys = KeyStore(redis_url, prefix=prefix)
        self.runner = PipelineRunner.traced(
            self.settings, engine.vad, engine.diarizer, engine.model
        )
        store = SessionStore(redis_url, key_prefix=f"{prefix}session:")
        app = create_app(
            self.runner,
            store,
            self.settings,
            stream_backends=stream_backends,
            access=Access.from_settings(redis_url, self.settings),
        )
        self.client = TestClient(app)

    def key(self, name: str, **limits: Any) -> tuple[ApiKey, dict[str, str]]:
        """A new key and the headers that send it."""
        key, secret = asyncio.run(self._create(name, KeyLimits(**limits)))
        return key, {"Authorization": f"Bearer {secret}"}

    async def _create(self, name: str, limits: KeyLimits) -> tuple[ApiKey, str]:
        try:
            return await self.keys.create(name, limits)
        finally:
            await self.keys.aclose()

    def revoke(self, key: ApiKey) -> None:
        async def go() -> None:
            try:
                await self.keys.revoke(key.id)
            finally:
                await self.keys.aclose()

        asyncio.run(go())

    def hold_slot(self, key: ApiKey, kind: str) -> None:
        """A slot held by an upload or stream in flight elsewhere (another replica)."""
        with redis.Redis.from_url(self.url) as r:
            expiry = int((time.time() + 3600) * 1000)
            r.zadd(f"{self.prefix}slots:{kind}:{key.id}", {"elsewhere": expiry})

    def upload(self, talk: Conversation, headers: dict[str, str]) -> Any:
        files = {"file": ("talk.wav", talk.wav_bytes(), "audio/wav")}
        return self.client.post("/transcribe", files=files, data=FAST, headers=headers)


@pytest.fixture
def service(engine: Any, stream_backends: Any, redis_url: str) -> Iterator[Service]:
    s = Service(engine, stream_backends, redis_url)
    with s.client:
        yield s


def _unauthorized(r: Any) -> str:
    assert r.status_code == 401, r.text
    assert r.headers["www-authenticate"].startswith("Bearer")
    assert r.headers["content-type"] == "application/json"
    return str(r.json()["detail"])


def test_without_any_key_created_the_401_says_how_to_make_one(service: Service) -> None:
    detail = _unauthorized(service.client.get("/sessions"))
    assert "ethostral keys create" in detail
    _, headers = service.key("first")
    detail = _unauthorized(service.client.get("/sessions"))
    assert "Authorization: Bearer" in detail
    assert "keys create" not in detail  # a key exists now: the hint would mislead
    assert service.client.get("/sessions", headers=headers).status_code == 200


def test_missing_malformed_unknown_and_revoked_keys_are_refused(service: Service) -> None:
    key, headers = service.key("client")
    secret = headers["Authorization"].split()[1]
    session_id = str(uuid.uuid4())
    for bad in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": f"Basic {secret}"},
        {"Authorization": "Bearer eth_not-a-key"},
    ):
        for method, path in (
            ("GET", "/sessions"),
            ("GET", f"/sessions/{session_id}"),
            ("DELETE", f"/sessions/{session_id}"),
            ("GET", f"/sessions/{session_id}/srt"),
            ("GET", f"/sessions/{session_id}/vtt"),
        ):
            _unauthorized(service.client.request(method, path, headers=bad))
    assert service.client.get("/sessions", headers={"Authorization": f"Token {secret}"}).is_success
    service.revoke(key)
    assert "revoked" in _unauthorized(service.client.get("/sessions", headers=headers))


def test_an_upload_without_a_key_is_refused_before_any_work(service: Service, talk) -> None:
    service.key("someone")
    _unauthorized(service.upload(talk, {}))
    with redis.Redis.from_url(service.url) as r:
        assert not r.keys(f"{service.prefix}session:*")


def test_health_and_docs_stay_open_and_openapi_declares_the_scheme(service: Service) -> None:
    assert service.client.get("/healthz").status_code == 200
    assert service.client.get("/docs").status_code == 200
    spec = service.client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert "security" not in spec["paths"]["/healthz"]["get"]
    for path in ("/transcribe", "/sessions", "/sessions/{session_id}"):
        for operation in spec["paths"][path].values():
            assert operation["security"] == [{"apiKey": []}]
            assert "401" in operation["responses"]


def test_sessions_belong_to_the_key_that_made_them(service: Service, talk) -> None:
    _, alice = service.key("alice")
    _, bob = service.key("bob")
    r = service.upload(talk, alice)
    assert r.status_code == 200, r.text
    session_id = r.json()["id"]
    c = service.client
    for path in (f"/sessions/{session_id}", f"/sessions/{session_id}/srt"):
        assert c.get(path, headers=bob).status_code == 404
        assert c.get(path, headers=alice).status_code == 200
    assert c.delete(f"/sessions/{session_id}", headers=bob).status_code == 404
    assert c.get(f"/sessions/{session_id}", headers=alice).status_code == 200  # not deleted
    listed = c.get("/sessions", headers=alice).json()
    assert [s["id"] for s in listed["sessions"]] == [session_id]
    assert listed["sessions"][0]["filename"] == "talk.wav"
    assert listed["next_cursor"] is None
    assert c.get("/sessions", headers=bob).json() == {"sessions": [], "next_cursor": None}
    assert c.delete(f"/sessions/{session_id}", headers=alice).status_code == 204
    assert c.get("/sessions", headers=alice).json()["sessions"] == []


def test_sessions_stored_while_auth_was_off_are_no_keys(service: Service, engine) -> None:
    open_store = SessionStore(service.url, key_prefix=f"{service.prefix}session:")
    from ethostral_serve.schema import Session

    old = Session(filename="before.wav", language="en", duration_ms=1000)

    async def save() -> None:
        try:
            await open_store.save(old)
        finally:
            await open_store.aclose()

    asyncio.run(save())
    _, headers = service.key("newcomer")
    assert service.client.get(f"/sessions/{old.id}", headers=headers).status_code == 404
    assert service.client.get("/sessions", headers=headers).json()["sessions"] == []


def test_concurrent_upload_quota_gives_429_with_retry_after(service: Service, talk) -> None:
    key, headers = service.key("one-at-a-time", max_concurrent_uploads=1)
    service.hold_slot(key, "uploads")
    r = service.upload(talk, headers)
    assert r.status_code == 429, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert "1 upload at once" in r.json()["detail"]
    # Another key is not held back by this one's uploads.
    _, other = service.key("other", max_concurrent_uploads=1)
    assert service.upload(talk, other).status_code == 200


def test_daily_audio_quota_counts_uploads_and_refuses_once_used_up(service: Service, talk) -> None:
    # Just under one clip's length: the first upload is admitted, the second is over.
    hours = (talk.duration_ms / 1000 - 0.5) / 3600
    _, headers = service.key("metered", audio_hours_per_day=hours)
    assert service.upload(talk, headers).status_code == 200
    r = service.upload(talk, headers)
    assert r.status_code == 429, r.text
    assert abs(int(r.headers["retry-after"]) - seconds_to_utc_midnight()) <= 5
    assert "midnight UTC" in r.json()["detail"]


def _close_code(ws: Any) -> tuple[list[dict[str, Any]], int]:
    events: list[dict[str, Any]] = []
    with pytest.raises(WebSocketDisconnect) as closed:
        while True:
            events.append(ws.receive_json())
    return events, closed.value.code


def test_a_stream_without_a_valid_key_is_closed_4401(service: Service) -> None:
    service.key("exists")
    for headers in ({}, {"Authorization": "Bearer eth_wrong"}):
        with service.client.websocket_connect("/transcribe/stream", headers=headers) as ws:
            events, code = _close_code(ws)
        assert code == CLOSE_UNAUTHORIZED
        assert events[-1]["type"] == "error" and "API key" in events[-1]["detail"]


def test_a_stream_authenticates_with_the_browser_subprotocol_and_owns_its_session(
    service: Service, talk
) -> None:
    _, alice = service.key("browser")
    _, bob = service.key("eve")
    secret = alice["Authorization"].split()[1]
    pcm = talk.wav_bytes()[44:]  # 16 kHz mono PCM16 after the WAV header
    with service.client.websocket_connect(
        "/transcribe/stream?language=en&diarize=false&emotion=false",
        subprotocols=["token", secret],
    ) as ws:
        assert ws.accepted_subprotocol == "token"
        for i in range(0, len(pcm), 32000):
            ws.send_bytes(pcm[i : i + 32000])
        ws.send_json({"type": "stop"})
        events, code = _close_code(ws)
    assert code == 1000
    session_id = events[-1]["session_id"]
    assert service.client.get(f"/sessions/{session_id}", headers=alice).status_code == 200
    assert service.client.get(f"/sessions/{session_id}", headers=bob).status_code == 404


def test_stream_quotas_close_4429(service: Service, talk) -> None:
    key, headers = service.key("one-stream", max_concurrent_streams=1)
    service.hold_slot(key, "streams")
    with service.client.websocket_connect("/transcribe/stream", headers=headers) as ws:
        events, code = _close_code(ws)
    assert code == CLOSE_QUOTA
    assert "1 live stream at once" in events[-1]["detail"]

    # Audio hours run out mid-stream: what was finalised is stored, then 4429.
    _, metered = service.key("metered-stream", audio_hours_per_day=5 / 3600)
    pcm = talk.wav_bytes()[44:] * 2  # counted every 10 s: over 5 s at the first count
    assert len(pcm) / 32000 > 12
    with service.client.websocket_connect(
        "/transcribe/stream?language=en&diarize=false&emotion=false", headers=metered
    ) as ws:
        for i in range(0, len(pcm), 32000):
            ws.send_bytes(pcm[i : i + 32000])
        events, code = _close_code(ws)
    assert code == CLOSE_QUOTA
    assert events[-1]["type"] == "error" and "hours of audio" in events[-1]["detail"]
    listed = service.client.get("/sessions", headers=metered).json()["sessions"]
    assert len(listed) == 1 and listed[0]["segments"] >= 1


def test_an_upload_without_a_key_is_refused_before_its_body_is_read(service: Service) -> None:
    """Without a key, the server answers 401 at once: it never receives the upload."""
    service.key("someone")
    sent: list[int] = []

    def body() -> Iterator[bytes]:
        for i in range(1000):  # 64 MB if it were all read
            sent.append(i)
            yield b"\0" * 65536

    r = service.client.post(
        "/transcribe",
        content=body(),
        headers={"Content-Type": "multipart/form-data; boundary=xyz"},
    )
    _unauthorized(r)
    assert r.headers["connection"] == "close"
    assert len(sent) <= 1, f"{len(sent)} chunks of the body were read"


def test_an_upload_whose_client_left_keeps_its_slot_then_is_stored_and_counted(
    service: Service,
) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from ethostral_serve.api.uploads import Uploads
    from ethostral_serve.metrics import NoopMetrics
    from ethostral_serve.quotas import QuotaStore
    from ethostral_serve.schema import Session

    class AudioRecorder(NoopMetrics):
        def __init__(self) -> None:
            self.recorded: list[tuple[str, float]] = []

        def audio(self, kind: Any, seconds: float) -> None:
            self.recorded.append((kind, seconds))

    key, headers = service.key("left", audio_hours_per_day=1.0)
    caller = Caller(key)
    store = SessionStore(service.url, key_prefix=f"{service.prefix}session:")
    quotas = QuotaStore(service.url, prefix=service.prefix)
    access = Access(service.keys, quotas)
    metrics = AudioRecorder()
    runs = ThreadPoolExecutor(max_workers=1)
    uploads = Uploads(service.runner, store, access, runs, metrics)
    session = Session(filename="left.wav", language="en", duration_ms=42_000)

    async def go() -> float:
        try:
            run: asyncio.Future[Session] = asyncio.get_running_loop().create_future()
            finishing = asyncio.create_task(uploads.finish_abandoned(run, caller))
            await asyncio.sleep(0)
            assert not finishing.done()  # it waits for the run, holding the caller's slot
            run.set_result(session)
            await finishing
            return await quotas.audio_used_s(key.id)
        finally:
            for s in (store, quotas, service.keys):
                await s.aclose()

    assert asyncio.run(go()) == 42.0
    runs.shutdown()
    assert metrics.recorded == [("upload", 42.0)]  # and recorded in the metrics
    listed = service.client.get("/sessions", headers=headers).json()["sessions"]
    assert [s["id"] for s in listed] == [session.id]
