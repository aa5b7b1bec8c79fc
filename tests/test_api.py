"""The HTTP API in-process (FastAPI TestClient) over the real models and a real Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import datetime

import numpy as np
import pytest
from conftest import require_data
from fastapi.testclient import TestClient
from media import encode
from redis_server import free_port, redis_server
from speech import two_speaker_conversation

from benchmarks.common import speaker_agreement
from ethostral_serve.api.app import create_app
from ethostral_serve.audio import decode_audio
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.schema import EMOTION_LABELS, Session
from ethostral_serve.sessions import SessionStore

pytestmark = pytest.mark.slow

SESSION_KEYS = {
    "id",
    "filename",
    "language",
    "duration_ms",
    "created_at",
    "segments",
    "has_audio",
}
SEGMENT_KEYS = {"id", "speaker", "start_ms", "end_ms", "text", "emotion"}
EMOTION_KEYS = {"label", "valence", "arousal", "dominance", "confidence"}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def runner(engine) -> PipelineRunner:
    return PipelineRunner.traced(engine.settings, engine.vad, engine.diarizer, engine.model)


@pytest.fixture(scope="module")
def client(runner, redis_url, settings) -> Iterator[TestClient]:
    app = create_app(runner, SessionStore(redis_url), settings)
    with TestClient(app) as c:
        yield c


def _dbsize(url: str) -> int:
    import redis

    with redis.Redis.from_url(url) as r:
        return int(r.dbsize())


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    from benchmarks.common import normalise

    return float(jiwer.wer(normalise(ref), normalise(hyp)))


def test_upload_fetch_export_delete(client: TestClient) -> None:
    talk = two_speaker_conversation(turns_each=2)
    r = client.post("/transcribe", files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == SESSION_KEYS
    assert str(uuid.UUID(body["id"])) == body["id"]
    assert body["filename"] == "talk.wav"
    assert body["language"] == "en"  # detected: no language was sent
    assert abs(body["duration_ms"] - talk.duration_ms) <= 1
    assert datetime.fromisoformat(body["created_at"]).tzinfo is not None
    segments = body["segments"]
    assert segments
    previous = -1
    for seg in segments:
        assert set(seg) >= SEGMENT_KEYS
        assert seg["speaker"][0] == "s" and seg["speaker"][1:].isdigit()
        assert previous <= seg["start_ms"] <= seg["end_ms"] <= body["duration_ms"] + 50
        previous = seg["start_ms"]
        assert set(seg["emotion"]) == EMOTION_KEYS
        assert seg["emotion"]["label"] in EMOTION_LABELS
        for k in ("valence", "arousal", "dominance"):
            assert -1.0 <= seg["emotion"][k] <= 1.0
        assert 0.0 <= seg["emotion"]["confidence"] <= 1.0
    assert len({s["speaker"] for s in segments}) >= 2
    assert speaker_agreement(segments, talk.truth) > 0.85
    assert _wer(talk.reference, " ".join(s["text"] for s in segments)) <= 0.2

    got = client.get(f"/sessions/{body['id']}")
    assert got.status_code == 200
    assert got.json() == body

    srt = client.get(f"/sessions/{body['id']}/srt")
    assert srt.status_code == 200
    assert srt.headers["content-type"].startswith("application/x-subrip")
    assert "-->" in srt.text and segments[0]["text"].strip()[:10] in srt.text
    vtt = client.get(f"/sessions/{body['id']}/vtt")
    assert vtt.status_code == 200 and vtt.text.startswith("WEBVTT")

    assert client.delete(f"/sessions/{body['id']}").status_code == 204
    gone = client.get(f"/sessions/{body['id']}")
    assert gone.status_code == 404 and body["id"] in gone.json()["detail"]
    assert client.delete(f"/sessions/{body['id']}").status_code == 404


def test_unknown_and_malformed_session_ids_are_404(client: TestClient) -> None:
    for sid in (str(uuid.uuid4()), "not-a-uuid"):
        for path in (f"/sessions/{sid}", f"/sessions/{sid}/srt"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["detail"]
        assert client.delete(f"/sessions/{sid}").status_code == 404


def test_aac_in_mp4_upload(client: TestClient) -> None:
    folder = require_data("asr", "jfk")
    x = decode_audio(folder / "jfk.flac").samples
    m4a = encode(x[np.newaxis, :], 16000, "mp4", "aac", "fltp")
    r = client.post(
        "/transcribe",
        files={"file": ("jfk.m4a", m4a, "audio/mp4")},
        data={"language": "en", "diarize": "false"},
    )
    assert r.status_code == 200, r.text
    text = " ".join(s["text"] for s in r.json()["segments"]).lower()
    assert "ask not what your country can do for you" in text.replace(",", "")
    assert {s["speaker"] for s in r.json()["segments"]} == {"s0"}


def test_speaker_count_bounds_the_speakers_found(client: TestClient) -> None:
    talk = two_speaker_conversation(turns_each=2)
    files = {"file": ("talk.wav", talk.wav_bytes(), "audio/wav")}
    one = client.post("/transcribe", files=files, data={"num_speakers": "1", "language": "en"})
    assert one.status_code == 200, one.text
    assert {s["speaker"] for s in one.json()["segments"]} == {"s0"}
    free = client.post("/transcribe", files=files, data={"max_speakers": "4", "language": "en"})
    assert free.status_code == 200, free.text
    assert len({s["speaker"] for s in free.json()["segments"]}) == 2


def test_emotion_off_leaves_emotion_null(client: TestClient) -> None:
    folder = require_data("asr", "jfk")
    r = client.post(
        "/transcribe",
        files={"file": ("jfk.flac", (folder / "jfk.flac").read_bytes())},
        data={"emotion": "false", "language": "auto"},
    )
    assert r.status_code == 200, r.text
    assert r.json()["segments"] and all(s["emotion"] is None for s in r.json()["segments"])


@pytest.mark.parametrize(
    ("files", "data", "status", "needle"),
    [
        ({"file": ("noise.wav", b"\x00\x01garbage" * 100, "audio/wav")}, {}, 415, "decod"),
        ({"file": ("empty.wav", b"", "audio/wav")}, {}, 400, "empty"),
        (None, {"language": "en"}, 422, "file"),
        ({"file": ("a.wav", b"x")}, {"diarize": "maybe"}, 422, "diarize"),
        ({"file": ("a.wav", b"x")}, {"language": "klingon"}, 422, "klingon"),
        ({"file": ("a.wav", b"x")}, {"adapter": "calls"}, 422, "unknown adapter 'calls'"),
        ({"file": ("a.wav", b"x")}, {"num_speakers": "0"}, 422, "num_speakers"),
        ({"file": ("a.wav", b"x")}, {"max_speakers": "two"}, 422, "max_speakers"),
        (
            {"file": ("a.wav", b"x")},
            {"min_speakers": "3", "max_speakers": "2"},
            422,
            "min_speakers (3) must not be larger than max_speakers (2)",
        ),
        (
            {"file": ("a.wav", b"x")},
            {"num_speakers": "5", "max_speakers": "4"},
            422,
            "num_speakers (5) lies outside",
        ),
    ],
)
def test_bad_uploads_get_a_clear_4xx_and_store_nothing(
    client: TestClient, redis_url: str, files, data, status: int, needle: str
) -> None:
    before = _dbsize(redis_url)
    r = client.post("/transcribe", files=files, data=data)
    assert r.status_code == status, r.text
    assert needle in str(r.json()["detail"]).lower()
    assert _dbsize(redis_url) == before


def test_upload_over_the_size_limit_is_413(runner, redis_url, settings) -> None:
    small = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"max_upload_mb": 0.01})}
    )
    app = create_app(runner, SessionStore(redis_url), small)
    with TestClient(app) as c:
        r = c.post("/transcribe", files={"file": ("big.wav", b"\0" * 50_000)})
        assert r.status_code == 413
        assert "0.01 MB" in r.json()["detail"]
        # a body under the limit goes through to the decoder (and fails there: 415)
        r = c.post("/transcribe", files={"file": ("small.wav", b"\1" * 2_000)})
        assert r.status_code == 415


def test_redis_down_is_503_with_retry_after(runner, settings) -> None:
    app = create_app(runner, SessionStore(f"redis://127.0.0.1:{free_port()}/0"), settings)
    folder = require_data("asr", "jfk")
    with TestClient(app) as c:
        r = c.post("/transcribe", files={"file": ("jfk.flac", (folder / "jfk.flac").read_bytes())})
        assert r.status_code == 503
        assert r.headers["retry-after"].isdigit()
        assert "unavailable" in r.json()["detail"]
        r = c.get(f"/sessions/{uuid.uuid4()}")
        assert r.status_code == 503 and "retry-after" in r.headers
        health = c.get("/healthz")
        assert health.status_code == 503
        assert health.json()["status"] == "unavailable" and health.json()["checks"]["store"] != "ok"


def test_healthz_and_openapi(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok", "checks": {"store": "ok"}}
    spec = client.get("/openapi.json").json()
    assert {"/transcribe", "/sessions/{session_id}", "/healthz"} <= set(spec["paths"])
    responses = spec["paths"]["/transcribe"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(responses)
    example = spec["components"]["schemas"]["Session"]["examples"][0]
    assert Session.model_validate(example).segments[0].emotion is not None


def test_an_external_redis_that_goes_down_and_comes_back_needs_no_restart(
    runner, settings, tmp_path
) -> None:
    port = free_port()
    store = SessionStore(f"redis://127.0.0.1:{port}/0", timeout_s=1.0)
    jfk = require_data("asr", "jfk") / "jfk.flac"
    form = {"language": "en", "diarize": "false", "emotion": "false"}
    with TestClient(create_app(runner, store, settings)) as c:
        with redis_server(tmp_path / "first", port=port):
            r = c.post("/transcribe", files={"file": ("jfk.flac", jfk.read_bytes())}, data=form)
            assert r.status_code == 200, r.text
            assert c.get("/healthz").status_code == 200
        # Down: every route that needs Redis says 503, and retries later.
        r = c.post("/transcribe", files={"file": ("jfk.flac", jfk.read_bytes())}, data=form)
        assert r.status_code == 503 and r.headers["retry-after"].isdigit()
        assert c.get("/sessions").status_code == 503
        assert c.get("/healthz").status_code == 503
        # Back (an empty server on the same address): the same app works again.
        with redis_server(tmp_path / "second", port=port):
            assert c.get("/healthz").status_code == 200
            r = c.post("/transcribe", files={"file": ("jfk.flac", jfk.read_bytes())}, data=form)
            assert r.status_code == 200, r.text
            assert c.get(f"/sessions/{r.json()['id']}").status_code == 200


def test_healthz_names_a_deployment_with_no_ready_replica(runner, redis_url, settings) -> None:
    import asyncio

    # The production timeout (5 s), not a shortened one: the checks that answer (a real
    # Redis among them) must answer within it even on a loaded machine; the one that
    # never answers times out whatever the timeout is.

    async def being_replaced() -> None:  # a handle call that waits for a new replica
        await asyncio.Event().wait()

    async def answers() -> None:
        return None

    checks = {"EthostralModel": being_replaced, "VAD": answers}
    app = create_app(runner, SessionStore(redis_url), settings, health_checks=checks)
    with TestClient(app) as c:
        r = c.get("/healthz")
    assert r.status_code == 503
    body = r.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["VAD"] == "ok" and body["checks"]["store"] == "ok"
    assert "no replica is ready" in body["checks"]["EthostralModel"]
