"""The Python client (``ethostral_serve.client``), blocking and asyncio, against the real
app: in-process over HTTP (FastAPI's TestClient, httpx's ASGI transport), and behind a
real uvicorn server for live streams, over the real models and a real Redis.

The client's job-progress path (``transcribe`` as a job, a failed job) is also covered
by ``test_api_jobs.py::test_python_client_follows_a_job_to_its_session``.
"""

from __future__ import annotations

import asyncio
import io
import json
import subprocess
import sys
import threading
import uuid
import wave
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from live_server import serving
from redis_server import free_port
from speech import Conversation, two_speaker_conversation

from benchmarks.common import wer_counts
from ethostral_serve.client import (
    ApiError,
    AsyncClient,
    Client,
    ErrorEvent,
    FinalEvent,
    Job,
    PartialEvent,
    SessionEvent,
    StreamError,
)
from ethostral_serve.client.live import audio_source, plan_stream
from ethostral_serve.client.protocol import EventParser
from ethostral_serve.schema import EMOTION_LABELS

HEAVY = ("torch", "ray", "numpy", "fastapi", "starlette", "redis", "av", "ethostral_serve.api")
FAST = {"language": "en", "diarize": False, "emotion": False}
MISSING = str(uuid.uuid4())


# -- without a server ----------------------------------------------------------------


def test_the_client_imports_without_the_server_stack() -> None:
    code = (
        "import json, sys; import ethostral_serve.client as c; "
        "assert c.Client and c.AsyncClient and c.ApiError and c.StreamError; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert json.loads(out.stdout) == []


def test_event_parser_splits_server_sent_events() -> None:
    parser = EventParser()
    lines = [": keep-alive", "", "id: 1-0", "event: running", 'data: {"a":', "data: 1}", ""]
    events = [e for e in map(parser.feed, lines) if e is not None]
    assert [(e.id, e.name, e.data) for e in events] == [("1-0", "running", '{"a":\n1}')]
    parser.feed("data: tail")  # a body that ends without its blank line
    assert (last := parser.flush()) is not None and last.data == "tail"


def test_wav_files_are_sent_as_mono_pcm16_at_their_rate(tmp_path: Path) -> None:
    left = np.arange(-800, 800, dtype="<i2")
    stereo = np.stack([left, left // 2 + 100], axis=1)
    path = _wav(tmp_path / "two.wav", stereo, rate=8000)
    source = audio_source(path, None, "pcm_s16le", chunk_ms=100)
    assert (source.sample_rate, source.filename) == (8000, "two.wav")
    sent = b"".join(asyncio.run(_collect(source.chunks)))
    expected = (stereo.astype(np.int32).sum(axis=1) // 2).astype("<i2")
    assert np.array_equal(np.frombuffer(sent, "<i2"), expected)
    raw = audio_source(b"\0\0" * 3200, None, "pcm_s16le", chunk_ms=100)
    assert [len(c) for c in asyncio.run(_collect(raw.chunks))] == [3200, 3200]  # 100 ms each

    with pytest.raises(ValueError, match="not the 16000 Hz asked"):
        audio_source(path, 16000, "pcm_s16le", chunk_ms=100)
    with pytest.raises(ValueError, match="only 16-bit PCM"):
        audio_source(
            _wav(tmp_path / "8bit.wav", np.zeros(80, "u1"), width=1), None, "pcm_s16le", 100
        )
    (tmp_path / "notes.wav").write_bytes(b"not a wav file at all")
    with pytest.raises(ValueError, match="not a PCM WAV file"):
        audio_source(tmp_path / "notes.wav", None, "pcm_s16le", 100)
    with pytest.raises(ValueError, match="encoding"):
        audio_source(b"", None, "mp3", 100)
    with pytest.raises(TypeError):
        audio_source(42, None, "pcm_s16le", 100)  # type: ignore[arg-type]
    with pytest.raises(FileNotFoundError):
        audio_source(tmp_path / "absent.wav", None, "pcm_s16le", 100)


def test_stream_urls_ask_to_keep_the_audio_only_when_told() -> None:
    def url(**options: Any) -> httpx.URL:
        base = {"language": None, "diarize": True, "emotion": True, "adapter": None}
        _, target = plan_stream(
            "https://asr.example/api/",
            None,
            True,
            60.0,
            b"",
            sample_rate=None,
            encoding="pcm_s16le",
            chunk_ms=100,
            key_in_subprotocol=False,
            num_speakers=None,
            min_speakers=None,
            max_speakers=None,
            filename=None,
            **{**base, **options},
        )
        return httpx.URL(target.url)

    kept = url(store_audio=True)
    assert (kept.scheme, kept.path) == ("wss", "/api/transcribe/stream")
    assert kept.params["store_audio"] == "true"
    assert "store_audio" not in url().params and "store_audio" not in url(store_audio=False).params


def test_a_stream_whose_connection_drops_raises_with_1006() -> None:
    """A server that takes the audio and then vanishes without a close frame."""
    from websockets.asyncio.server import serve

    async def vanish(ws: Any) -> None:
        await ws.recv()
        ws.transport.abort()

    async def go() -> list[Any]:
        async with serve(vanish, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            client = AsyncClient(f"http://127.0.0.1:{port}")
            return [e async for e in client.stream(b"\0\0" * 16000)]

    with pytest.raises(StreamError) as dropped:
        asyncio.run(go())
    assert dropped.value.code == 1006
    assert "lost" in str(dropped.value)


def test_an_audio_source_that_fails_raises_its_own_error_and_closes() -> None:
    from websockets.asyncio.server import serve

    received: list[bytes | str] = []

    async def listen(ws: Any) -> None:
        async for message in ws:  # until the client closes
            received.append(message)

    async def failing() -> AsyncIterator[bytes]:
        yield b"\0\0" * 1600
        raise RuntimeError("the microphone went away")

    async def go() -> None:
        async with serve(listen, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async for _ in AsyncClient(f"http://127.0.0.1:{port}").stream(failing()):
                pass

    with pytest.raises(RuntimeError, match="microphone went away"):
        asyncio.run(go())
    assert received == [b"\0\0" * 1600]  # the audio before the failure, and no stop


def test_a_stream_to_no_server_raises_oserror() -> None:
    with pytest.raises(OSError):
        list(Client(f"http://127.0.0.1:{free_port()}").stream(b"\0\0" * 1600))
    assert not _stream_threads()


# -- the real app ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def talk() -> Conversation:
    return two_speaker_conversation(turns_each=1)


@pytest.fixture(scope="module")
def stream_backends(engine: Any) -> Any:
    from ethostral_serve.backends.stream import LocalStreamBackends
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad

    return LocalStreamBackends(SileroStreamingVad(), engine.model, engine.diarizer)


class Service:
    """The real app under its own Redis prefix: keys, sessions and jobs apart."""

    def __init__(
        self,
        engine: Any,
        redis_url: str,
        *,
        stream_backends: Any = None,
        auth: bool = False,
        spool: Path | None = None,
        store_url: str | None = None,
    ) -> None:
        from ethostral_serve.api.app import create_app
        from ethostral_serve.api.auth import Access
        from ethostral_serve.api.jobs import Jobs
        from ethostral_serve.runner import PipelineRunner
        from ethostral_serve.sessions import SessionStore
        from ethostral_serve.settings import AuthSettings, JobSettings

        self.prefix = f"t-{uuid.uuid4().hex[:8]}:"
        self.redis_url = redis_url
        update: dict[str, Any] = {"auth": AuthSettings(required=auth, key_prefix=self.prefix)}
        if spool is not None:
            update["jobs"] = JobSettings(spool_dir=spool, spool_host="test", lease_s=1.0)
        settings = engine.settings.model_copy(update=update)
        runner = PipelineRunner.traced(settings, engine.vad, engine.diarizer, engine.model)
        store = SessionStore(store_url or redis_url, key_prefix=f"{self.prefix}session:")
        self.app: FastAPI = create_app(
            runner,
            store,
            settings,
            stream_backends=stream_backends,
            access=Access.from_settings(redis_url, settings),
            jobs=Jobs.from_settings(redis_url, settings) if spool is not None else None,
        )

    def key(self, name: str, **limits: Any) -> str:
        """A new API key (its secret)."""
        from ethostral_serve.keys import KeyLimits, KeyStore

        async def create() -> str:
            keys = KeyStore(self.redis_url, prefix=self.prefix)
            try:
                _, secret = await keys.create(name, KeyLimits(**limits))
            finally:
                await keys.aclose()
            return secret

        return asyncio.run(create())


@pytest.mark.slow
def test_blocking_client_uploads_pages_exports_and_deletes(
    engine: Any, redis_url: str, talk: Conversation, tmp_path: Path
) -> None:
    audio = tmp_path / "talk.wav"
    audio.write_bytes(talk.wav_bytes())
    service = Service(engine, redis_url)
    with TestClient(service.app) as http, Client("http://testserver", http=http) as client:
        assert client.health().status == "ok"
        first = client.transcribe(audio, as_job=False, **FAST)
        assert first.filename == "talk.wav" and first.segments
        wer, _ = wer_counts([talk.reference], [" ".join(s.text for s in first.segments)])
        assert wer < 0.3
        second = client.transcribe(
            io.BytesIO(talk.wav_bytes()), as_job=False, filename="again.wav", **FAST
        )
        assert second.filename == "again.wav"
        assert client.get(first.id) == first

        page = client.list_sessions(limit=1)
        assert [s.id for s in page.sessions] == [second.id] and page.next_cursor
        rest = client.list_sessions(limit=1, cursor=page.next_cursor)
        assert [s.id for s in rest.sessions] == [first.id]
        assert [s.id for s in client.iter_sessions(page_size=1)] == [second.id, first.id]
        assert client.list_sessions().sessions[1].segments == len(first.segments)

        srt = client.subtitles(first.id, "srt")
        vtt = client.subtitles(first.id, "vtt")
        assert srt.startswith("1\n00:00:") and first.segments[0].text.strip() in srt
        assert vtt.startswith("WEBVTT")
        with pytest.raises(ValueError, match="'srt' or 'vtt'"):
            client.subtitles(first.id, "txt")  # type: ignore[arg-type]

        with pytest.raises(ApiError) as unsupported:
            client.transcribe(audio, as_job=False, language="xx")
        assert unsupported.value.status_code == 422 and "xx" in unsupported.value.detail
        with pytest.raises(ApiError) as undecodable:
            client.transcribe(b"not audio" * 100, as_job=False, filename="notes.wav")
        assert undecodable.value.status_code == 415
        with pytest.raises(ApiError) as no_jobs:  # this app runs no jobs
            client.transcribe(audio, **FAST)
        assert no_jobs.value.status_code == 422
        with pytest.raises(ValueError, match="as_job=True"):
            client.transcribe(audio, as_job=False, on_progress=print)

        client.delete(first.id)
        for call in (client.get, client.delete, client.subtitles):
            with pytest.raises(ApiError) as gone:
                call(first.id)
            assert gone.value.status_code == 404 and gone.value.retry_after_s is None
        with pytest.raises(ApiError) as unknown:
            client.get("not-a-uuid")
        assert unknown.value.status_code == 404 and "UUID" in unknown.value.detail
        assert [s.id for s in client.iter_sessions()] == [second.id]


@pytest.mark.slow
def test_async_client_over_asgi_jobs_progress_and_stored_audio(
    engine: Any, redis_url: str, talk: Conversation, tmp_path: Path
) -> None:
    service = Service(engine, redis_url, spool=tmp_path / "spool")
    audio = tmp_path / "talk.wav"
    audio.write_bytes(talk.wav_bytes())

    async def go() -> None:
        transport = httpx.ASGITransport(app=service.app)
        async with (
            service.app.router.lifespan_context(service.app),  # runs the job worker
            httpx.AsyncClient(transport=transport, base_url="http://testserver") as http,
            AsyncClient("http://testserver", http=http) as client,
        ):
            assert (await client.health()).status == "ok"
            with audio.open("rb") as f:
                job = await client.submit(f, store_audio=True, **FAST)
            assert job.status == "queued" and job.filename == "talk.wav"
            states = [state async for state in client.job_events(job.id)]
            assert states[0].status == "queued" and states[-1].status == "done"
            session = await client.get(job.id)
            assert session.segments and session.has_audio
            kept = await client.audio(job.id)
            assert kept.startswith(b"OggS")  # kept as Ogg/Opus

            seen: list[Job] = []

            async def progress(state: Job) -> None:
                seen.append(state)

            plain = await client.transcribe(audio, on_progress=progress, **FAST)
            assert seen[-1].status == "done" and seen[-1].id == plain.id
            assert not plain.has_audio
            with pytest.raises(ApiError) as not_kept:
                await client.audio(plain.id)
            assert not_kept.value.status_code == 404
            synchronous = await client.transcribe(talk.wav_bytes(), as_job=False, **FAST)
            assert synchronous.filename == "upload"

            with pytest.raises(ApiError) as failed:  # a job that fails: its status
                await client.transcribe(b"not audio" * 100, filename="notes.wav")
            assert failed.value.status_code == 415

            listed = [s.id async for s in client.iter_sessions(page_size=2)]
            assert listed == [synchronous.id, plain.id, job.id]
            await client.delete(job.id)
            with pytest.raises(ApiError) as gone:
                await client.get(job.id)
            assert gone.value.status_code == 404

    asyncio.run(go())


@pytest.mark.slow
def test_retry_after_and_health_when_the_store_is_down(engine: Any, redis_url: str) -> None:
    from ethostral_serve.api.auth import RETRY_AFTER_S

    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    service = Service(engine, redis_url, store_url=dead)
    with serving(service.app) as url, Client(url) as client:
        with pytest.raises(ApiError) as down:
            client.get(MISSING)
        assert down.value.status_code == 503 and down.value.retry_after_s == RETRY_AFTER_S
        health = client.health()  # a report, not an error
        assert health.status == "unavailable" and health.checks["store"] != "ok"
        with pytest.raises(ApiError) as refused:  # this app serves no live streams
            list(client.stream(b"\0\0" * 1600))
        assert refused.value.status_code == 403
    assert not _stream_threads()


@pytest.mark.slow
def test_live_streams_async_and_blocking(
    engine: Any, redis_url: str, stream_backends: Any, talk: Conversation, tmp_path: Path
) -> None:
    pcm = (np.clip(talk.samples, -1, 1) * 32767).astype("<i2")
    stereo = _wav(tmp_path / "talk.wav", np.stack([pcm, pcm], axis=1))
    service = Service(engine, redis_url, stream_backends=stream_backends)
    with serving(service.app) as url:

        async def stream_file() -> list[Any]:
            async with AsyncClient(url) as client:
                events = [e async for e in client.stream(stereo, language="en", store_audio=True)]
                assert isinstance(events[-1], SessionEvent)
                stored = await client.get(events[-1].session_id)
                kept = await client.audio(stored.id)
            assert stored.filename == "talk.wav" and stored.has_audio
            assert kept.startswith(b"OggS") and b"OpusHead" in kept[:64]  # Ogg/Opus
            text = " ".join(s.text for s in stored.segments)
            assert wer_counts([talk.reference], [text])[0] < 0.35
            return events

        events = asyncio.run(stream_file())
        assert {type(e) for e in events} <= {PartialEvent, FinalEvent, SessionEvent}
        finals = [e for e in events if isinstance(e, FinalEvent)]
        assert finals and all(f.emotion and f.emotion.label in EMOTION_LABELS for f in finals)
        assert all(e.emotion is None for e in events if isinstance(e, PartialEvent))

        def chunks() -> Iterator[bytes]:  # a blocking source, e.g. a microphone
            data = pcm.tobytes()
            for i in range(0, len(data), 6400):
                yield data[i : i + 6400]

        with Client(url) as client:
            blocking = list(client.stream(chunks(), emotion=False, diarize=False, language="en"))
            assert isinstance(blocking[-1], SessionEvent)
            finals = [e for e in blocking if isinstance(e, FinalEvent)]
            assert finals and all(f.emotion is None and f.speaker == "s0" for f in finals)
            stored = client.get(blocking[-1].session_id)
            assert stored.filename == "stream" and stored.segments
            assert not stored.has_audio  # not asked to keep it
            with pytest.raises(ApiError) as not_kept:
                client.audio(stored.id)
            assert not_kept.value.status_code == 404 and "not kept" in not_kept.value.detail

            for event in client.stream(pcm.tobytes(), **FAST):  # leave at the first event
                assert isinstance(event, PartialEvent | FinalEvent)
                break
            assert not _stream_threads()

            with pytest.raises(StreamError) as bad:
                list(client.stream(pcm.tobytes(), min_speakers=3, max_speakers=2))
            assert bad.value.code == 1008 and "bad stream parameters" in bad.value.detail
            seen: list[Any] = []
            with pytest.raises(StreamError) as unsupported:
                seen.extend(client.stream(pcm.tobytes(), language="xx"))
            assert unsupported.value.code == 1008 and "xx" in unsupported.value.detail
            assert [type(e) for e in seen] == [ErrorEvent]  # the error came as an event first


@pytest.mark.slow
def test_api_keys_over_http_and_streams(
    engine: Any, redis_url: str, stream_backends: Any, talk: Conversation, tmp_path: Path
) -> None:
    service = Service(engine, redis_url, stream_backends=stream_backends, auth=True)
    metered = service.key("metered", audio_hours_per_day=0.001)  # 3.6 s a day
    free = service.key("free")
    first_utterance = talk.samples[: int(talk.truth[0][1] * 16000) + 8000]
    pcm = (np.clip(first_utterance, -1, 1) * 32767).astype("<i2").tobytes()
    audio = tmp_path / "talk.wav"
    audio.write_bytes(talk.wav_bytes())
    with serving(service.app) as url:
        for key in (None, "wrong"):
            with Client(url, api_key=key) as anonymous:
                assert anonymous.health().status == "ok"  # open to anyone
                with pytest.raises(ApiError) as refused:
                    anonymous.get(MISSING)
                assert refused.value.status_code == 401
                with pytest.raises(StreamError) as closed:
                    list(anonymous.stream(pcm))
                assert closed.value.code == 4401

        with Client(url, api_key=metered) as client:
            session = client.transcribe(audio, as_job=False, **FAST)  # counts 10+ s
            with pytest.raises(ApiError) as over:
                client.transcribe(audio, as_job=False, **FAST)
            assert over.value.status_code == 429
            assert 0 < (over.value.retry_after_s or 0) <= 86400  # until UTC midnight
            with pytest.raises(StreamError) as quota:
                list(client.stream(pcm))
            assert quota.value.code == 4429
            assert client.get(session.id) == session

        with Client(url, api_key=free) as client:
            with pytest.raises(ApiError) as others:  # sessions belong to their key
                client.get(session.id)
            assert others.value.status_code == 404
            events = list(client.stream(pcm, key_in_subprotocol=True, **FAST))
            assert isinstance(events[-1], SessionEvent)
            assert client.get(events[-1].session_id).segments


@pytest.mark.slow
def test_ethostral_stream_cli_uses_the_client(
    engine: Any,
    redis_url: str,
    stream_backends: Any,
    talk: Conversation,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ethostral_serve.cli import main

    audio = tmp_path / "talk.wav"
    audio.write_bytes(talk.wav_bytes())
    service = Service(engine, redis_url, stream_backends=stream_backends)
    with serving(service.app) as url:
        args = ["stream", str(audio), "--url", url, "--speed", "1000", "--no-emotion"]
        assert main([*args, "--language", "en"]) == 0
        lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
        assert lines[-1]["type"] == "session" and set(lines[-1]) == {"type", "session_id"}
        final = next(e for e in lines if e["type"] == "final")
        assert list(final) == [
            "type", "segment_id", "speaker", "text", "start_ms", "end_ms", "emotion"
        ]  # fmt: skip
        with Client(url) as client:
            assert client.get(lines[-1]["session_id"]).filename == "talk.wav"

        assert main([*args, "--language", "xx"]) == 1
        captured = capsys.readouterr()
        assert json.loads(captured.out)["type"] == "error"
        assert "1008" in captured.err and "xx" in captured.err


# -- helpers ---------------------------------------------------------------------------


def _wav(path: Path, samples: np.ndarray, rate: int = 16000, width: int = 2) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1 if samples.ndim == 1 else samples.shape[1])
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(samples.tobytes())
    return path


async def _collect(chunks: Any) -> list[bytes]:
    return [c async for c in chunks]


def _stream_threads() -> list[threading.Thread]:
    """Threads of blocking streams still running (none once each stream has ended)."""
    return [t for t in threading.enumerate() if t.name == "ethostral-stream"]
