"""The OpenAI-compatible API (``/v1``) through the official ``openai`` SDK, in-process
(FastAPI TestClient as the SDK's HTTP client), over the real models and a real Redis."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import redis
from conftest import require_data
from fastapi import FastAPI
from fastapi.testclient import TestClient
from redis_server import free_port
from speech import Conversation, two_speaker_conversation

from benchmarks.common import speaker_agreement
from ethostral_serve.api.app import create_app
from ethostral_serve.api.auth import Access
from ethostral_serve.api.openai_compat import (
    SESSION_HEADER,
    OpenAIAPIError,
    OpenAIErrorMiddleware,
    served_model_id,
)
from ethostral_serve.keys import KeyLimits, KeyStore
from ethostral_serve.languages import language_name
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.schema import EMOTION_LABELS
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import AuthSettings, Settings

pytestmark = pytest.mark.slow

JFK_TEXT = "ask not what your country can do for you"


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    from benchmarks.common import normalise

    return float(jiwer.wer(normalise(ref), normalise(hyp)))


def _plain(text: str) -> str:
    return " ".join(text.lower().replace(",", "").split())


@pytest.fixture(scope="module")
def runner(engine: Any) -> PipelineRunner:
    return PipelineRunner.traced(engine.settings, engine.vad, engine.diarizer, engine.model)


@pytest.fixture(scope="module")
def client(runner: PipelineRunner, redis_url: str, settings: Settings) -> Iterator[TestClient]:
    app = create_app(runner, SessionStore(redis_url), settings)
    with TestClient(app) as c:
        yield c


def sdk(http: TestClient, api_key: str = "unused") -> openai.OpenAI:
    """The official SDK sending its requests through ``http`` (no retries: a 429 is seen)."""
    return openai.OpenAI(
        base_url="http://testserver/v1", api_key=api_key, http_client=http, max_retries=0
    )


@pytest.fixture(scope="module")
def oa(client: TestClient) -> openai.OpenAI:
    return sdk(client)


@pytest.fixture(scope="module")
def jfk() -> tuple[str, bytes, str]:
    return ("jfk.flac", (require_data("asr", "jfk") / "jfk.flac").read_bytes(), "audio/flac")


@pytest.fixture(scope="module")
def talk() -> Conversation:
    return two_speaker_conversation(turns_each=2)


@pytest.fixture(scope="module")
def talk_verbose(oa: openai.OpenAI, talk: Conversation) -> Any:
    """The conversation as ``verbose_json`` with segment and word timestamps (raw response)."""
    return oa.audio.transcriptions.with_raw_response.create(
        file=("talk.wav", talk.wav_bytes(), "audio/wav"),
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["segment", "word"],
    )


def test_json_is_the_text_and_its_session_is_stored(oa: openai.OpenAI, client, jfk) -> None:
    raw = oa.audio.transcriptions.with_raw_response.create(file=jfk, model="whisper-1")
    result = raw.parse()
    assert isinstance(result, openai.types.audio.Transcription)
    assert JFK_TEXT in _plain(result.text)
    assert result.usage is not None and result.usage.seconds == pytest.approx(11.0, abs=0.1)
    # Stored like an upload to POST /transcribe, under the id the header names.
    session_id = raw.headers[SESSION_HEADER]
    stored = client.get(f"/sessions/{session_id}")
    assert stored.status_code == 200
    session = stored.json()
    assert session["filename"] == "jfk.flac"
    assert " ".join(s["text"] for s in session["segments"]) == result.text
    assert all(s["emotion"]["label"] in EMOTION_LABELS for s in session["segments"])
    listed = client.get("/sessions").json()["sessions"]
    assert session_id in {s["id"] for s in listed}


def test_text_srt_and_vtt(oa: openai.OpenAI, jfk) -> None:
    text = oa.audio.transcriptions.create(file=jfk, model="whisper-1", response_format="text")
    assert isinstance(text, str) and JFK_TEXT in _plain(text)
    srt = oa.audio.transcriptions.create(
        file=jfk, model="whisper-1", response_format="srt", language="en"
    )
    cues = srt.strip().split("\n\n")
    assert cues[0].startswith("1\n00:00:0") and " --> " in cues[0]
    assert JFK_TEXT in _plain(" ".join(c.split("\n", 2)[2] for c in cues).replace("[s0] ", ""))
    vtt = oa.audio.transcriptions.create(file=jfk, model="whisper-1", response_format="vtt")
    assert vtt.startswith("WEBVTT\n")
    assert "<v s0>" in vtt and "NOTE s0 " in vtt  # speaker voice spans, emotion notes
    assert JFK_TEXT in _plain(vtt)


def test_verbose_json_has_speakers_emotions_and_word_times(talk_verbose, talk) -> None:
    result = talk_verbose.parse()
    assert isinstance(result, openai.types.audio.TranscriptionVerbose)
    body = json.loads(talk_verbose.text)
    assert body["task"] == "transcribe"
    assert result.language == "english"
    assert result.duration == pytest.approx(talk.duration_ms / 1000, abs=0.01)
    assert _wer(talk.reference, result.text) <= 0.2
    segments = body["segments"]
    assert [s["id"] for s in segments] == list(range(len(segments)))
    assert " ".join(s["text"] for s in segments) == result.text
    for s in segments:
        assert 0 <= s["start"] <= s["end"] <= result.duration + 0.05
        assert s["seek"] == round(s["start"] * 1000) // 10  # 10 ms frames
        assert s["tokens"] == [] and s["temperature"] == 0.0 and s["no_speech_prob"] == 0.0
        assert -3.0 < s["avg_logprob"] <= 0.0 and s["compression_ratio"] > 0
        assert s["emotion"]["label"] in EMOTION_LABELS
        assert 0.0 <= s["emotion"]["confidence"] <= 1.0
    assert len({s["speaker"] for s in segments}) == 2
    as_ms = [
        {"start_ms": s["start"] * 1000, "end_ms": s["end"] * 1000, "speaker": s["speaker"]}
        for s in segments
    ]
    assert speaker_agreement(as_ms, talk.truth) > 0.85
    words = result.words or []
    assert len(words) >= len(talk.reference.split()) * 0.8
    assert all(a.start <= b.start for a, b in itertools.pairwise(words))
    assert _wer(talk.reference, " ".join(w.word for w in words)) <= 0.2


def test_verbose_json_gives_segments_or_words_as_asked(oa: openai.OpenAI, jfk) -> None:
    # Decoding is cheap next to the pipeline: one run per granularity, speakers off.
    only = {"diarize": "false", "emotion": "false"}
    default = oa.audio.transcriptions.with_raw_response.create(
        file=jfk, model="whisper-1", response_format="verbose_json", extra_body=only
    )
    body = json.loads(default.text)
    assert body["segments"] and "words" not in body
    assert all(s["emotion"] is None for s in body["segments"])  # emotion off: null
    words = oa.audio.transcriptions.with_raw_response.create(
        file=jfk,
        model="whisper-1",
        response_format="verbose_json",
        timestamp_granularities=["word"],
        extra_body=only,
    )
    body = json.loads(words.text)
    assert "segments" not in body and JFK_TEXT in _plain(" ".join(w["word"] for w in body["words"]))
    # Granularities apply to verbose_json only, as OpenAI's do.
    plain = oa.audio.transcriptions.with_raw_response.create(
        file=jfk, model="whisper-1", timestamp_granularities=["word"], extra_body=only
    )
    assert set(json.loads(plain.text)) == {"text", "usage"}


def test_diarized_json_by_speaker(oa: openai.OpenAI, talk: Conversation) -> None:
    result = oa.audio.transcriptions.create(
        file=("talk.wav", talk.wav_bytes(), "audio/wav"),
        model="gpt-4o-transcribe-diarize",
        response_format="diarized_json",
        language="en",
    )
    assert isinstance(result, openai.types.audio.TranscriptionDiarized)
    assert len({s.speaker for s in result.segments}) == 2
    assert all(uuid.UUID(s.id) for s in result.segments)
    assert _wer(talk.reference, result.text) <= 0.2


def test_stream_sends_text_deltas_then_the_whole_text(oa: openai.OpenAI, client, talk) -> None:
    raw = oa.audio.transcriptions.with_raw_response.create(
        file=("talk.wav", talk.wav_bytes(), "audio/wav"), model="whisper-1", stream=True
    )
    assert raw.headers["content-type"].startswith("text/event-stream")
    events = list(raw.parse())
    assert [type(e).__name__ for e in events[-1:]] == ["TranscriptionTextDoneEvent"]
    deltas = events[:-1]
    assert len(deltas) >= 2 and all(e.type == "transcript.text.delta" for e in deltas)
    done = events[-1]
    assert "".join(e.delta for e in deltas) == done.text
    assert _wer(talk.reference, done.text) <= 0.2
    # The deltas are the stored session's segments, in order.
    session = client.get(f"/sessions/{raw.headers[SESSION_HEADER]}").json()
    assert [e.delta.strip() for e in deltas] == [s["text"] for s in session["segments"]]


def test_stream_with_diarized_json_sends_segments(oa: openai.OpenAI, jfk) -> None:
    events = list(
        oa.audio.transcriptions.create(
            file=jfk, model="x", response_format="diarized_json", stream=True
        )
    )
    kinds = [e.type for e in events]
    assert kinds[-1] == "transcript.text.done"
    assert kinds[:-1] == ["transcript.text.delta", "transcript.text.segment"] * (len(kinds) // 2)
    for delta, segment in zip(events[:-1:2], events[1:-1:2], strict=True):
        assert delta.segment_id == segment.id and segment.speaker == "s0"
    assert JFK_TEXT in _plain(events[-1].text)


def test_store_audio_keeps_the_audio_for_playback(oa: openai.OpenAI, client, jfk) -> None:
    fast = {"diarize": "false", "emotion": "false"}
    kept = oa.audio.transcriptions.with_raw_response.create(
        file=jfk, model="whisper-1", extra_body={**fast, "store_audio": True}
    )
    audio = client.get(f"/sessions/{kept.headers[SESSION_HEADER]}/audio")
    assert audio.status_code == 200, audio.text
    assert audio.headers["content-type"].startswith("audio/ogg") and audio.content[:4] == b"OggS"
    assert client.get(f"/sessions/{kept.headers[SESSION_HEADER]}").json()["has_audio"] is True
    plain = oa.audio.transcriptions.with_raw_response.create(
        file=jfk, model="whisper-1", extra_body=fast
    )
    none = client.get(f"/sessions/{plain.headers[SESSION_HEADER]}/audio")
    assert none.status_code == 404 and "store_audio" in none.json()["detail"]


def test_any_model_name_runs_the_served_model(oa: openai.OpenAI, jfk) -> None:
    result = oa.audio.transcriptions.create(file=jfk, model="not-a-model-anyone-has")
    assert JFK_TEXT in _plain(result.text)


def test_models_are_listed_and_retrieved(oa: openai.OpenAI, settings: Settings) -> None:
    served = served_model_id(settings)
    assert served == "ethostral-whisper-base"
    listed = oa.models.list()
    assert [m.id for m in listed.data] == [served, "whisper-1"]
    assert all(m.object == "model" and m.owned_by == "ethostral-serve" for m in listed.data)
    assert all(abs(m.created - time.time()) < 24 * 3600 for m in listed.data)
    assert oa.models.retrieve("whisper-1").id == "whisper-1"
    assert oa.models.retrieve(served).id == served
    with pytest.raises(openai.NotFoundError) as missing:
        oa.models.retrieve("gpt-5")
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert "gpt-5" in missing.value.message


def _error(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


def test_invalid_requests_are_400_in_openai_shape(oa: openai.OpenAI, client, jfk) -> None:
    url = "/v1/audio/transcriptions"
    missing_file = _error(client.post(url, data={"model": "whisper-1"}), 400)
    assert missing_file["param"] == "file" and missing_file["type"] == "invalid_request_error"
    assert "file" in missing_file["message"]
    missing_model = _error(client.post(url, files={"file": jfk}), 400)
    assert missing_model["param"] == "model"
    cases = [
        ({"response_format": "xml"}, "response_format"),
        ({"temperature": 2.0}, "temperature"),
        ({"timestamp_granularities": ["sentence"]}, "timestamp_granularities[]"),
        ({"language": "xx"}, "language"),
    ]
    for fields, param in cases:
        with pytest.raises(openai.BadRequestError) as bad:
            oa.audio.transcriptions.create(file=jfk, model="whisper-1", **fields)
        assert bad.value.status_code == 400 and bad.value.param == param, fields
        assert bad.value.type == "invalid_request_error"
    with pytest.raises(openai.BadRequestError) as undecodable:
        oa.audio.transcriptions.create(file=("x.wav", b"garbage" * 50), model="whisper-1")
    assert undecodable.value.param == "file"
    assert "not a decodable audio" in undecodable.value.message
    with pytest.raises(openai.BadRequestError) as streamed:
        oa.audio.transcriptions.create(file=("x.wav", b"garbage" * 50), model="m", stream=True)
    assert streamed.value.param == "file"  # refused before any event is sent
    # Other paths keep their shape: FastAPI's 422 with `detail`.
    r = client.post("/transcribe", data={"language": "en"})
    assert r.status_code == 422 and isinstance(r.json()["detail"], list)
    # Unknown paths and methods under /v1 answer in OpenAI's shape too.
    assert _error(client.get("/v1/embeddings"), 404)["type"] == "invalid_request_error"
    wrong = client.put("/v1/models")
    assert _error(wrong, 405) and wrong.headers["allow"] == "GET"
    assert client.get("/nowhere").json() == {"detail": "Not Found"}


def test_upload_over_the_size_limit_is_413(runner, redis_url, settings) -> None:
    small = settings.model_copy(
        update={"limits": settings.limits.model_copy(update={"max_upload_mb": 0.01})}
    )
    with TestClient(create_app(runner, SessionStore(redis_url), small)) as c:
        with pytest.raises(openai.APIStatusError) as big:
            sdk(c).audio.transcriptions.create(file=("big.wav", b"\0" * 50_000), model="m")
        assert big.value.status_code == 413 and big.value.type == "invalid_request_error"
        assert "0.01 MB" in big.value.message


def test_store_down_is_503_server_error_with_retry_after(runner, settings, jfk) -> None:
    app = create_app(runner, SessionStore(f"redis://127.0.0.1:{free_port()}/0"), settings)
    with TestClient(app) as c:
        with pytest.raises(openai.InternalServerError) as down:
            sdk(c).audio.transcriptions.create(file=jfk, model="whisper-1")
        assert down.value.status_code == 503 and down.value.type == "server_error"
        assert down.value.response.headers["retry-after"].isdigit()


def test_openapi_documents_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    upload = spec["paths"]["/v1/audio/transcriptions"]["post"]
    assert {"200", "400", "401", "413", "429", "503"} <= set(upload["responses"])
    assert "422" not in upload["responses"]
    ok = upload["responses"]["200"]
    assert set(ok["content"]) == {
        "application/json",
        "text/plain",
        "application/x-subrip",
        "text/vtt",
        "text/event-stream",
    }
    assert SESSION_HEADER in ok["headers"]
    error = upload["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert error.endswith("/OpenAIError")
    form_ref = upload["requestBody"]["content"]["multipart/form-data"]["schema"]["$ref"]
    form = spec["components"]["schemas"][form_ref.rsplit("/", 1)[1]]
    assert form["required"] == ["file", "model"]
    assert form["properties"]["language"]["enum"][:3] == ["", "auto", "af"]
    assert form["properties"]["timestamp_granularities[]"]["items"]["enum"] == ["segment", "word"]
    assert {"/v1/models", "/v1/models/{model_id}"} <= set(spec["paths"])
    assert client.get("/docs").status_code == 200


# --- API keys and quotas -----------------------------------------------------------------


class KeyedService:
    """The app with API keys on (own Redis prefix), and a way to make keys."""

    def __init__(self, runner: PipelineRunner, redis_url: str, settings: Settings) -> None:
        self.prefix = f"t-{uuid.uuid4().hex[:8]}:"
        self.url = redis_url
        keyed = settings.model_copy(
            update={"auth": AuthSettings(required=True, key_prefix=self.prefix)}
        )
        self.app = create_app(
            runner,
            SessionStore(redis_url, key_prefix=f"{self.prefix}session:"),
            keyed,
            access=Access.from_settings(redis_url, keyed),
        )

    def key(self, name: str, **limits: Any) -> tuple[str, str]:
        """A new key's id and secret."""

        async def create() -> tuple[str, str]:
            keys = KeyStore(self.url, prefix=self.prefix)
            try:
                key, secret = await keys.create(name, KeyLimits(**limits))
            finally:
                await keys.aclose()
            return key.id, secret

        return asyncio.run(create())

    def hold_slot(self, key_id: str) -> None:
        """An upload of this key in flight elsewhere (another replica)."""
        with redis.Redis.from_url(self.url) as r:
            expiry = int((time.time() + 3600) * 1000)
            r.zadd(f"{self.prefix}slots:uploads:{key_id}", {"elsewhere": expiry})


@pytest.fixture
def keyed(runner: PipelineRunner, redis_url: str, settings: Settings) -> Iterator[TestClient]:
    service = KeyedService(runner, redis_url, settings)
    with TestClient(service.app) as c:
        c.service = service  # type: ignore[attr-defined]
        yield c


def test_a_missing_or_unknown_key_is_an_authentication_error(keyed: TestClient, jfk) -> None:
    _, secret = keyed.service.key("client")  # type: ignore[attr-defined]
    with pytest.raises(openai.AuthenticationError) as refused:
        sdk(keyed, "eth_not-a-key").audio.transcriptions.create(file=jfk, model="whisper-1")
    assert refused.value.code == "invalid_api_key"
    assert refused.value.type == "invalid_request_error"
    assert "unknown or revoked API key" in refused.value.message
    assert refused.value.response.headers["www-authenticate"].startswith("Bearer")
    with pytest.raises(openai.AuthenticationError):
        sdk(keyed, "eth_not-a-key").models.list()
    # The SDK always sends a key: without one (curl), the same error.
    for path in ("/v1/models", "/v1/models/whisper-1"):
        missing = _error(keyed.get(path), 401)
        assert missing["code"] == "invalid_api_key" and "missing API key" in missing["message"]
    missing = _error(keyed.post("/v1/audio/transcriptions", files={"file": jfk}), 401)
    assert missing["type"] == "invalid_request_error"
    assert [m.id for m in sdk(keyed, secret).models.list().data][-1] == "whisper-1"
    # Other paths keep `detail`.
    r = keyed.get("/sessions")
    assert r.status_code == 401 and "detail" in r.json()


def test_sessions_belong_to_the_key_that_made_them(keyed: TestClient, jfk) -> None:
    service = keyed.service  # type: ignore[attr-defined]
    _, alice = service.key("alice")
    _, bob = service.key("bob")
    raw = sdk(keyed, alice).audio.transcriptions.with_raw_response.create(
        file=jfk, model="whisper-1", response_format="text", extra_body={"diarize": "false"}
    )
    session_id = raw.headers[SESSION_HEADER]
    path = f"/sessions/{session_id}"
    assert keyed.get(path, headers={"Authorization": f"Bearer {alice}"}).status_code == 200
    assert keyed.get(path, headers={"Authorization": f"Bearer {bob}"}).status_code == 404


def test_quotas_are_rate_limit_errors_with_retry_after(keyed: TestClient, jfk) -> None:
    service = keyed.service  # type: ignore[attr-defined]
    key_id, secret = service.key("one-at-a-time", max_concurrent_uploads=1)
    service.hold_slot(key_id)
    with pytest.raises(openai.RateLimitError) as busy:
        sdk(keyed, secret).audio.transcriptions.create(file=jfk, model="whisper-1")
    assert busy.value.code == "rate_limit_exceeded" and busy.value.type == "requests"
    assert int(busy.value.response.headers["retry-after"]) >= 1
    assert "1 upload at once" in busy.value.message
    # Daily audio: just under one clip, so the first upload is admitted and counted.
    _, metered = service.key("metered", audio_hours_per_day=10.5 / 3600)
    fast = {"diarize": "false", "emotion": "false"}
    assert sdk(keyed, metered).audio.transcriptions.create(file=jfk, model="m", extra_body=fast)
    with pytest.raises(openai.RateLimitError) as spent:
        sdk(keyed, metered).audio.transcriptions.create(file=jfk, model="m", extra_body=fast)
    assert "midnight UTC" in spent.value.message


# --- the error middleware alone (pure unit checks) ---------------------------------------


def _unit_app() -> FastAPI:
    from ethostral_serve.api.app import install_error_handlers
    from ethostral_serve.errors import AudioDecodeError

    app = FastAPI()
    app.add_middleware(OpenAIErrorMiddleware)
    install_error_handlers(app)

    @app.get("/v1/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    @app.get("/v1/undecodable")
    async def undecodable() -> None:
        raise AudioDecodeError("cannot decode")

    @app.get("/v1/own")
    async def own() -> None:
        raise OpenAIAPIError(404, "no such thing", param="thing", code="thing_not_found")

    @app.get("/v1/fine")
    async def fine() -> dict[str, str]:
        return {"detail": "a 200 is left alone"}

    return app


def test_the_middleware_translates_only_errors_under_v1(caplog) -> None:
    with TestClient(_unit_app()) as c:
        bug = _error(c.get("/v1/boom"), 500)
        assert bug["type"] == "server_error" and "internal error (id " in bug["message"]
        assert "a bug" not in bug["message"]
        error_id = bug["message"].split("id ")[1].split(")")[0]
        assert any(error_id in r.getMessage() for r in caplog.records)
        assert _error(c.get("/v1/undecodable"), 400) == {
            "message": "cannot decode",
            "type": "invalid_request_error",
            "param": "file",
            "code": None,
        }
        assert _error(c.get("/v1/own"), 404)["code"] == "thing_not_found"
        assert c.get("/v1/fine").json() == {"detail": "a 200 is left alone"}
        assert c.get("/v1x").json() == {"detail": "Not Found"}  # not under /v1


def test_language_names_are_openai_s() -> None:
    assert language_name("en") == "english"
    assert language_name("yue") == "cantonese"
    assert language_name("und") == "und"


def test_served_model_ids_name_the_configured_model() -> None:
    assert served_model_id(Settings(speech_model="ethostral")) == "ethostral-voxtral-mini-3b-2507"
    # on an Inference Endpoint it is the same Ethostral model, not the local Whisper
    endpoint = Settings(speech_model="endpoint", endpoint={"url": "https://e.example/"})
    assert served_model_id(endpoint) == "ethostral-voxtral-mini-3b-2507"
    local = Settings(asr={"model": str(Path("/models/My Whisper"))})
    assert served_model_id(local) == "ethostral-whisper-my-whisper"
