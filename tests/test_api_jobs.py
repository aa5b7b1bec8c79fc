"""Asynchronous uploads (jobs) through the HTTP API in-process, over the real models and a
real Redis: 202 then the session, progress events, cancel, failures, bounds, callbacks,
and jobs that outlive the app that took them."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from speech import Conversation, two_speaker_conversation

from ethostral_serve import callbacks
from ethostral_serve.api.app import create_app
from ethostral_serve.api.auth import Access
from ethostral_serve.api.jobs import Jobs, JobWorker
from ethostral_serve.jobs import JobStore
from ethostral_serve.keys import KeyLimits, KeyStore
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import AuthSettings, JobSettings, Settings

pytestmark = pytest.mark.slow

FAST = {"diarize": "false", "emotion": "false", "language": "en"}
WAIT_S = 120.0  # generous bound on a job of a few seconds of audio (never reached when green)


@pytest.fixture(scope="module")
def talk() -> Conversation:
    return two_speaker_conversation(turns_each=1)


class GatedVad:
    """The real VAD, held until the test opens the gate (so a job is surely running)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = threading.Event()
        self.entered = threading.Event()

    def speech_regions(self, samples: np.ndarray) -> Any:
        self.entered.set()
        if not self.gate.wait(WAIT_S):
            raise TimeoutError("the test never opened the gate")
        return self.inner.speech_regions(samples)


class Service:
    """An app with jobs, under its own Redis prefix and spool; ``restart`` makes a new app
    over the same Redis and spool, as a restarted ingress would be."""

    def __init__(
        self,
        engine: Any,
        redis_url: str,
        spool: Path,
        auth: bool = False,
        vad: Any = None,
        **jobs: Any,
    ) -> None:
        self.prefix = f"t-{uuid.uuid4().hex[:8]}:"
        self.url = redis_url
        self.engine = engine
        self.vad = vad or engine.vad
        self.settings: Settings = engine.settings.model_copy(
            update={
                "auth": AuthSettings(required=auth, key_prefix=self.prefix),
                "jobs": JobSettings(spool_dir=spool, spool_host="test", lease_s=1.0, **jobs),
            }
        )
        self.client = self._client()

    def _client(self, **jobs: Any) -> TestClient:
        settings = self.settings
        if jobs:
            settings = settings.model_copy(update={"jobs": settings.jobs.model_copy(update=jobs)})
        e = self.engine
        runner = PipelineRunner.traced(settings, self.vad, e.diarizer, e.model)
        self.sessions = SessionStore(self.url, key_prefix=f"{self.prefix}session:")
        self.jobs = Jobs.from_settings(self.url, settings)
        app = create_app(
            runner,
            self.sessions,
            settings,
            access=Access.from_settings(self.url, settings),
            jobs=self.jobs,
        )
        return TestClient(app)

    def restart(self, **jobs: Any) -> TestClient:
        self.client.__exit__(None, None, None)
        self.client = self._client(**jobs)
        return self.client.__enter__()

    def submit(self, audio: bytes, name: str = "talk.wav", **extra: Any) -> Any:
        headers = extra.pop("headers", {})
        data = {**FAST, "async": "true", **extra}
        files = {"file": (name, audio, "audio/wav")}
        return self.client.post("/transcribe", files=files, data=data, headers=headers)

    def wait(self, job_id: str, until: Callable[[Any], bool], headers: Any = None) -> Any:
        """GET the session until ``until(response)`` (bounded by WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while True:
            r = self.client.get(f"/sessions/{job_id}", headers=headers or {})
            if until(r):
                return r
            assert time.monotonic() < deadline, f"job {job_id} stuck: {r.status_code} {r.text}"
            time.sleep(0.2)

    def raw(self) -> redis.Redis:
        return redis.Redis.from_url(self.url)

    def spooled(self) -> list[str]:
        directory = self.settings.jobs.spool_dir
        assert directory is not None
        return sorted(p.name for p in directory.glob("*")) if directory.exists() else []


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


def _events(client: TestClient, job_id: str, headers: Any = None) -> list[tuple[str, dict]]:
    """Every server-sent event of a job until the stream ends."""
    out: list[tuple[str, dict]] = []
    with client.stream("GET", f"/sessions/{job_id}/events", headers=headers or {}) as r:
        assert r.status_code == 200, r.read()
        assert r.headers["content-type"].startswith("text/event-stream")
        event: dict[str, str] = {}
        for line in r.iter_lines():
            if line.startswith(":"):
                continue
            if not line:
                if "data" in event:
                    out.append((event.get("event", "message"), json.loads(event["data"])))
                event = {}
                continue
            name, _, value = line.partition(": ")
            event[name] = value
    return out


def test_async_upload_answers_202_then_progress_then_the_same_session(
    make_service: Callable[..., Service], talk: Conversation
) -> None:
    s = make_service()
    sync = s.client.post(
        "/transcribe", files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")}, data=FAST
    )
    assert sync.status_code == 200
    r = s.submit(talk.wav_bytes())
    assert r.status_code == 202, r.text
    job = r.json()
    assert job["status"] == "queued" and job["filename"] == "talk.wav"
    assert r.headers["location"] == f"/sessions/{job['id']}"
    events = _events(s.client, job["id"])
    statuses = [name for name, _ in events]
    assert statuses[0] == "queued" and statuses[-1] == "done"
    assert "running" in statuses
    fractions = [data["progress"] for _, data in events]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    stages = {data["stage"] for _, data in events if data["stage"]}
    assert "asr" in stages
    got = s.client.get(f"/sessions/{job['id']}")
    assert got.status_code == 200
    session = got.json()
    assert session["id"] == job["id"]
    assert [seg["text"] for seg in session["segments"]] == [
        seg["text"] for seg in sync.json()["segments"]
    ]
    listed = s.client.get("/sessions").json()["sessions"]
    assert job["id"] in {x["id"] for x in listed}
    assert s.spooled() == []  # the upload is deleted once its job ends
    # the events of a finished job: the whole history again, ending in done
    assert [name for name, _ in _events(s.client, job["id"])][-1] == "done"
    # a synchronous upload's session has one event
    (only,) = _events(s.client, sync.json()["id"])
    assert only[0] == "done" and only[1]["id"] == sync.json()["id"]


def test_prefer_respond_async_and_synchronous_uploads_unchanged(
    make_service: Callable[..., Service], talk: Conversation
) -> None:
    s = make_service()
    files = {"file": ("talk.wav", talk.wav_bytes(), "audio/wav")}
    r = s.client.post(
        "/transcribe", files=files, data=FAST, headers={"Prefer": "respond-async, wait=5"}
    )
    assert r.status_code == 202 and r.headers["preference-applied"] == "respond-async"
    done = s.wait(r.json()["id"], lambda x: x.status_code != 202)
    assert done.status_code == 200 and done.json()["segments"]
    r = s.client.post("/transcribe", files=files, data=FAST, headers={"Prefer": "return=minimal"})
    assert r.status_code == 200 and r.json()["segments"]


def test_undecodable_upload_fails_late_with_the_status_a_synchronous_upload_gets(
    make_service: Callable[..., Service],
) -> None:
    s = make_service()
    r = s.submit(b"this is not audio at all" * 100, name="notes.wav")
    assert r.status_code == 202  # nothing decodes the upload before it is queued
    failed = s.wait(r.json()["id"], lambda x: x.status_code != 202)
    assert failed.status_code == 415
    body = failed.json()
    assert body["status"] == "failed" and body["status_code"] == 415
    assert body["detail"]
    assert [name for name, _ in _events(s.client, body["id"])][-1] == "failed"
    assert s.spooled() == []
    assert s.client.delete(f"/sessions/{body['id']}").status_code == 204  # forgets it
    assert s.client.get(f"/sessions/{body['id']}").status_code == 404


def test_cancel_a_queued_job(make_service: Callable[..., Service], talk: Conversation) -> None:
    s = make_service(max_running=0)  # this replica only queues
    job = s.submit(talk.wav_bytes()).json()
    assert s.client.get(f"/sessions/{job['id']}").status_code == 202
    assert len(s.spooled()) == 1
    assert s.client.delete(f"/sessions/{job['id']}").status_code == 204
    assert s.client.get(f"/sessions/{job['id']}").status_code == 404
    assert s.client.get(f"/sessions/{job['id']}/events").status_code == 404
    assert s.client.delete(f"/sessions/{job['id']}").status_code == 404
    assert s.spooled() == []
    with s.raw() as r:
        assert r.scard(f"{s.prefix}jobs:open") == 0


def test_cancel_a_running_job_stores_nothing(
    engine: Any, make_service: Callable[..., Service], talk: Conversation
) -> None:
    vad = GatedVad(engine.vad)
    s = make_service(vad=vad)
    job = s.submit(talk.wav_bytes()).json()
    assert vad.entered.wait(WAIT_S)  # the job is running, held before its VAD
    running = s.client.get(f"/sessions/{job['id']}")
    assert running.status_code == 202 and running.json()["status"] == "running"
    assert s.client.delete(f"/sessions/{job['id']}").status_code == 204
    vad.gate.set()
    deadline = time.monotonic() + WAIT_S
    while s.spooled():  # the run stops, and its upload is deleted
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert s.client.get(f"/sessions/{job['id']}").status_code == 404
    with s.raw() as r:
        assert r.get(s.sessions.key(job["id"])) is None


def test_job_bounds_spool_quota_and_bad_requests(
    make_service: Callable[..., Service], talk: Conversation
) -> None:
    s = make_service(max_running=0, max_queued_per_key=1)
    assert s.submit(talk.wav_bytes()).status_code == 202
    r = s.submit(talk.wav_bytes())
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    assert "jobs queued or running" in r.json()["detail"]
    assert len(s.spooled()) == 1  # the refused upload is not kept

    tiny = make_service(max_running=0, spool_max_gb=1e-6)  # 1000 bytes
    r = tiny.submit(talk.wav_bytes())
    assert r.status_code == 503 and "spool" in r.json()["detail"]
    assert tiny.spooled() == []

    r = s.submit(talk.wav_bytes(), callback_url="ftp://example.com/hook")
    assert r.status_code == 422 and "http" in r.json()["detail"]
    r = s.submit(talk.wav_bytes(), callback_url="http://127.0.0.1:9/hook")
    assert r.status_code == 422 and "callback_allow" in r.json()["detail"]


def test_async_needs_a_server_with_jobs(engine: Any, redis_url: str, talk: Conversation) -> None:
    runner = PipelineRunner.traced(engine.settings, engine.vad, engine.diarizer, engine.model)
    app = create_app(runner, SessionStore(redis_url), engine.settings)
    with TestClient(app) as client:
        files = {"file": ("talk.wav", talk.wav_bytes(), "audio/wav")}
        r = client.post("/transcribe", files=files, data={**FAST, "async": "true"})
    assert r.status_code == 422 and "asynchronous" in r.json()["detail"]


class Receiver:
    """A loopback HTTP server recording the callbacks it gets."""

    def __init__(self) -> None:
        self.got: list[tuple[dict[str, str], bytes]] = []
        self.arrived = threading.Event()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                receiver.got.append((dict(self.headers.items()), body))
                self.send_response(200)
                self.end_headers()
                receiver.arrived.set()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_signed_callback_reaches_a_loopback_receiver(
    make_service: Callable[..., Service], talk: Conversation
) -> None:
    s = make_service(callback_allow=["127.0.0.1"])
    receiver = Receiver()
    try:
        r = s.submit(talk.wav_bytes(), callback_url=receiver.url, **{"async": "false"})
        assert r.status_code == 202  # a callback makes it a job
        job_id = r.json()["id"]
        assert receiver.arrived.wait(WAIT_S)
    finally:
        receiver.close()
    (headers, body), *more = receiver.got
    assert more == []
    secret = s.client.get("/callbacks/secret").json()["secret"]
    assert callbacks.verify(secret, headers, body)
    assert not callbacks.verify(secret, headers, body + b" ")
    assert headers["X-Ethostral-Job"] == job_id
    payload = json.loads(body)
    assert payload["job"]["status"] == "done" and payload["job"]["id"] == job_id
    assert payload["session"] == s.client.get(f"/sessions/{job_id}").json()


def test_queued_job_runs_after_a_restart(
    make_service: Callable[..., Service], talk: Conversation
) -> None:
    s = make_service(max_running=0)
    job = s.submit(talk.wav_bytes()).json()
    client = s.restart(max_running=1)  # a new app over the same Redis and spool
    done = s.wait(job["id"], lambda x: x.status_code != 202)
    assert done.status_code == 200 and done.json()["segments"]
    assert client.get(f"/sessions/{job['id']}").json()["id"] == job["id"]
    assert s.spooled() == []


def test_job_of_a_replica_that_died_runs_again_once(
    make_service: Callable[..., Service], talk: Conversation
) -> None:
    s = make_service(max_running=0)
    job = s.submit(talk.wav_bytes()).json()
    # A replica claims the job and dies without a word: its lease (1 s) is never renewed.
    dead = JobStore(s.url, prefix=s.prefix, lease_s=1.0)
    claim = asyncio.run(_claim_and_close(dead, "test"))
    assert claim is not None and claim.record.job.id == job["id"]
    assert s.client.get(f"/sessions/{job['id']}").json()["status"] == "running"
    s.restart(max_running=1)
    done = s.wait(job["id"], lambda x: x.status_code != 202)
    assert done.status_code == 200
    with s.raw() as r:
        assert int(r.hget(f"{s.prefix}job:{job['id']}", "attempts")) == 2
        assert r.zcard(f"{s.prefix}jobs:running") == 0
    # the first replica's lease is gone: it could not complete the job a second time
    assert asyncio.run(_renew_and_close(dead, claim)) == "lost"
    assert s.spooled() == []


async def _claim_and_close(store: JobStore, host: str) -> Any:
    try:
        return await store.claim(host)
    finally:
        await store.aclose()


async def _renew_and_close(store: JobStore, claim: Any) -> str:
    try:
        return await store.renew(claim)
    finally:
        await store.aclose()


def test_jobs_belong_to_their_key_and_wait_for_its_upload_slot(
    make_service: Callable[..., Service], talk: Conversation
) -> None:
    s = make_service(auth=True)
    keys = KeyStore(s.url, prefix=s.prefix)

    async def create() -> Any:
        try:
            a = await keys.create("a", KeyLimits(max_concurrent_uploads=1))
            b = await keys.create("b")
            return a, b
        finally:
            await keys.aclose()

    (key_a, secret_a), (_, secret_b) = asyncio.run(create())
    a = {"Authorization": f"Bearer {secret_a}"}
    b = {"Authorization": f"Bearer {secret_b}"}
    slots = f"{s.prefix}slots:uploads:{key_a.id}"
    with s.raw() as r:  # key a's only upload slot is held by an upload elsewhere
        r.zadd(slots, {"elsewhere": int((time.time() + 3600) * 1000)})
    job = s.submit(talk.wav_bytes(), headers=a).json()
    assert s.client.get(f"/sessions/{job['id']}", headers=b).status_code == 404
    assert s.client.delete(f"/sessions/{job['id']}", headers=b).status_code == 404
    assert s.client.get(f"/sessions/{job['id']}/events", headers=b).status_code == 404
    assert (
        s.client.get("/callbacks/secret", headers=a).json()
        != s.client.get("/callbacks/secret", headers=b).json()
    )
    # the job is tried, finds no slot, and waits in the queue without using an attempt
    deadline = time.monotonic() + WAIT_S
    with s.raw() as r:
        while True:
            state = r.hgetall(f"{s.prefix}job:{job['id']}")
            tried = state[b"updated_at"] != job["updated_at"].encode()
            if tried and state[b"status"] == b"queued":
                break
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert state[b"attempts"] == b"0"
        r.zrem(slots, "elsewhere")  # the other upload ends
    done = s.wait(job["id"], lambda x: x.status_code != 202, headers=a)
    assert done.status_code == 200


def test_python_client_follows_a_job_to_its_session(
    make_service: Callable[..., Service], talk: Conversation, tmp_path: Path
) -> None:
    from ethostral_serve.client import ApiError, Client

    s = make_service()
    audio = tmp_path / "talk.wav"
    audio.write_bytes(talk.wav_bytes())
    seen: list[str] = []
    with Client("http://testserver", http=s.client) as client:
        session = client.transcribe(
            audio,
            on_progress=lambda job: seen.append(job.status),
            language="en",
            diarize=False,
            emotion=False,
        )
        assert session.segments and session.filename == "talk.wav"
        assert seen[0] == "queued" and seen[-1] == "done"
        assert client.get(session.id) == session
        bad = tmp_path / "notes.wav"
        bad.write_bytes(b"not audio" * 100)
        with pytest.raises(ApiError) as failed:
            client.transcribe(bad)
        assert failed.value.status_code == 415
        client.delete(session.id)
        with pytest.raises(ApiError) as gone:
            client.get(session.id)
        assert gone.value.status_code == 404


def test_the_job_worker_stops_even_when_its_cancellation_is_lost(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's asyncio.wait_for drops a cancellation that arrives as the awaitable
    it waits for completes (redis-py sends every command through it): the worker's loop
    still ends, so an app shutting down does not wait forever."""
    settings = Settings(
        auth=AuthSettings(key_prefix=f"t-{uuid.uuid4().hex[:8]}:"),
        jobs=JobSettings(spool_dir=tmp_path, spool_host="test"),
    )
    jobs = Jobs.from_settings(redis_url, settings)
    worker = JobWorker(jobs, None, None, None, None)  # type: ignore[arg-type]

    async def scenario() -> bool:
        inside = asyncio.Event()
        lost: list[bool] = []

        async def heartbeat(host: str, ttl_s: float) -> None:
            inside.set()
            try:
                await asyncio.Event().wait()  # until cancelled
            except asyncio.CancelledError:
                if lost:
                    raise
                lost.append(True)  # the first cancellation is lost

        monkeypatch.setattr(jobs.store, "heartbeat", heartbeat)
        worker.start()
        await asyncio.wait({asyncio.ensure_future(inside.wait())}, timeout=WAIT_S)
        assert inside.is_set()
        stopping = asyncio.ensure_future(worker.stop())
        done, _ = await asyncio.wait({stopping}, timeout=WAIT_S)
        await jobs.store.aclose()
        return lost == [True] and stopping in done

    assert asyncio.run(scenario())
