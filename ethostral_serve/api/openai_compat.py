"""OpenAI's audio transcription API over this service: ``POST /v1/audio/transcriptions``
and ``GET /v1/models``, so OpenAI's SDKs and tools work against it unchanged.

Requests take OpenAI's fields and answer in OpenAI's formats (``json``, ``text``, ``srt``,
``vtt``, ``verbose_json``, ``diarized_json``, or server-sent events with ``stream=true``);
any ``model`` name runs the configured speech model. Each transcription runs and is
stored by :class:`~ethostral_serve.api.uploads.Uploads`, as a synchronous
``POST /transcribe`` is (same keys, quotas, slots and metrics);
``X-Ethostral-Session-Id`` names it. Errors under ``/v1`` take OpenAI's shape
``{"error": {"message", "type", "param", "code"}}`` (:class:`OpenAIErrorMiddleware`),
every other path keeps ``{"detail"}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import re
import time
import uuid
import zlib
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import PurePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ethostral_serve.api.caller import CallerDep
from ethostral_serve.api.uploads import Uploads
from ethostral_serve.errors import EthostralError
from ethostral_serve.languages import DETECT, language_name
from ethostral_serve.pipeline.compose import TranscribeOptions
from ethostral_serve.schema import Emotion, Segment, Session
from ethostral_serve.settings import Settings
from ethostral_serve.subtitles import to_srt, to_vtt

log = logging.getLogger("ethostral_serve.api.openai")

PREFIX = "/v1"
UPLOAD_PATH = f"{PREFIX}/audio/transcriptions"
SESSION_HEADER = "X-Ethostral-Session-Id"
WHISPER_ALIAS = "whisper-1"  # what OpenAI clients send by default
OWNER = "ethostral-serve"

ResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt", "diarized_json"]
Granularity = Literal["segment", "word"]


# --- OpenAI's shapes -------------------------------------------------------------------


class OpenAIErrorBody(BaseModel):
    """What went wrong, as OpenAI reports it."""

    message: str = Field(description="what was wrong, in words")
    type: str = Field(
        description="`invalid_request_error` (4xx), `requests` (429), `server_error` (5xx)"
    )
    param: str | None = Field(description="the request field at fault, when one is")
    code: str | None = Field(
        description="`invalid_api_key` (401), `rate_limit_exceeded` (429), "
        "`model_not_found` (404 of a model), else null"
    )


class OpenAIError(BaseModel):
    """Body of every error under `/v1`."""

    error: OpenAIErrorBody


class Usage(BaseModel):
    """The audio billed: its duration."""

    type: Literal["duration"] = "duration"
    seconds: float = Field(ge=0, description="duration of the input audio in seconds")


class Transcription(BaseModel):
    """`response_format=json`: the text."""

    text: str
    usage: Usage


class TranscriptionWord(BaseModel):
    """A word and its time (seconds)."""

    word: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)


class TranscriptionSegment(BaseModel):
    """A segment of `verbose_json`: OpenAI's fields plus the speaker and its emotion."""

    id: int = Field(ge=0, description="index of the segment")
    seek: int = Field(ge=0, description="the segment's start in 10 ms frames")
    start: float = Field(ge=0, description="seconds")
    end: float = Field(ge=0, description="seconds")
    text: str
    tokens: list[int] = Field(description="always empty: token ids are not kept")
    temperature: float = Field(description="always 0.0: not tracked per segment")
    avg_logprob: float = Field(description="mean log-probability of the segment's words")
    compression_ratio: float = Field(description="bytes of the text over its zlib size")
    no_speech_prob: float = Field(description="always 0.0: not tracked per segment")
    speaker: str = Field(description="'s0', 's1', ... in order of first appearance")
    emotion: Emotion | None = Field(description="null when `emotion=false`")
    session_segment_id: str = Field(description="the segment's id in the stored session")


class TranscriptionVerbose(BaseModel):
    """`response_format=verbose_json`."""

    task: Literal["transcribe"] = "transcribe"
    language: str = Field(description="English name of the language, e.g. 'english'")
    duration: float = Field(ge=0, description="seconds")
    text: str
    segments: list[TranscriptionSegment] | None = Field(
        None, description="with `timestamp_granularities[]=segment` (the default)"
    )
    words: list[TranscriptionWord] | None = Field(
        None, description="with `timestamp_granularities[]=word`"
    )
    usage: Usage


class TranscriptionDiarizedSegment(BaseModel):
    """A segment of `diarized_json`, with its emotion."""

    type: Literal["transcript.text.segment"] = "transcript.text.segment"
    id: str
    start: float = Field(ge=0)
    end: float = Field(ge=0)
    speaker: str
    text: str
    emotion: Emotion | None = Field(description="null when `emotion=false`")


class TranscriptionDiarized(BaseModel):
    """`response_format=diarized_json`: the text by speaker."""

    task: Literal["transcribe"] = "transcribe"
    duration: float = Field(ge=0)
    text: str
    segments: list[TranscriptionDiarizedSegment]
    usage: Usage


class TextDeltaEvent(BaseModel):
    """`stream=true`: more text (one segment's, after the first with a leading space)."""

    type: Literal["transcript.text.delta"] = "transcript.text.delta"
    delta: str
    segment_id: str | None = Field(None, description="with `diarized_json`: its segment")


class TextDoneEvent(BaseModel):
    """`stream=true`: the whole text; the last event."""

    type: Literal["transcript.text.done"] = "transcript.text.done"
    text: str


class Model(BaseModel):
    """A model name the server answers to."""

    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the server started serving it")
    owned_by: str


class ModelList(BaseModel):
    """Every model name the server answers to."""

    object: Literal["list"] = "list"
    data: list[Model]


# --- errors ----------------------------------------------------------------------------


class OpenAIAPIError(Exception):
    """An error to answer in OpenAI's shape, naming the field at fault."""

    def __init__(
        self, status: int, message: str, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code


def openai_status(status: int) -> int:
    """OpenAI's status for ours: it refuses invalid values and undecodable files with 400
    (never 422 or 415)."""
    return 400 if status in (415, 422) else status


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    """``{"error": {...}}`` for an error of this (OpenAI) status."""
    if status == 401:
        kind, code = "invalid_request_error", code or "invalid_api_key"
    elif status == 429:
        kind, code = "requests", code or "rate_limit_exceeded"
    elif status >= 500:
        kind = "server_error"
    else:
        kind = "invalid_request_error"
    body = OpenAIErrorBody(message=message, type=kind, param=param, code=code)
    return {"error": body.model_dump()}


def _from_detail(status: int, detail: object) -> tuple[str, str | None]:
    """Message and field of a ``{"detail"}`` body: words, or FastAPI's validation list."""
    if isinstance(detail, list) and detail and isinstance(detail[0], dict):
        first = detail[0]
        loc = [str(p) for p in first.get("loc", [])]
        if loc and loc[0] in ("body", "query", "path", "header"):
            loc = loc[1:]
        param = loc[0] if loc else None  # the field, not an index within it
        if first.get("type") == "missing":
            return f"Missing required parameter: '{param}'.", param
        return f"Invalid value for '{param}': {first.get('msg', 'invalid')}.", param
    return str(detail), "file" if status == 415 else None


class OpenAIErrorMiddleware:
    """Answers errors under ``/v1`` in OpenAI's shape: rewrites ``{"detail"}`` bodies (the
    routes' domain errors, FastAPI's validation, the auth and body-size middlewares inside
    it) keeping their headers (``Retry-After``, ``WWW-Authenticate``), and renders
    :class:`OpenAIAPIError` and unexpected exceptions. Add it outermost."""

    def __init__(self, app: ASGIApp, prefix: str = PREFIX) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = str(scope.get("path", ""))
        if scope["type"] != "http" or not (
            path == self.prefix or path.startswith(self.prefix + "/")
        ):
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of a JSON error, until its body is read
        chunks: list[bytes] = []
        started = False

        async def translating_send(message: Message) -> None:
            nonlocal held, started
            if message["type"] == "http.response.start":
                started = True
                if message["status"] >= 400 and _is_json(message.get("headers", [])):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, held = held, None
                for part in _translated(start, b"".join(chunks)):
                    await send(part)
                return
            await send(message)

        try:
            await self.app(scope, receive, translating_send)
        except OpenAIAPIError as exc:
            if started:
                raise
            await _send_json(
                send, exc.status, error_body(exc.status, exc.message, exc.param, exc.code)
            )
        except Exception as exc:
            if started:
                raise
            error_id = uuid.uuid4().hex[:12]
            log.error("error %s on %s %s", error_id, scope.get("method"), path, exc_info=exc)
            message = f"internal error (id {error_id}); the server log has the details"
            await _send_json(send, 500, error_body(500, message))


def _is_json(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(
        k.lower() == b"content-type" and v.split(b";")[0].strip() == b"application/json"
        for k, v in headers
    )


def _translated(start: Message, body: bytes) -> list[Message]:
    """The response start and body, with a ``{"detail"}`` body in OpenAI's shape."""
    status = int(start["status"])
    headers = list(start.get("headers", []))
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict) and "detail" in data and "error" not in data:
        message, param = _from_detail(status, data["detail"])
        status = openai_status(status)
        body = json.dumps(error_body(status, message, param)).encode()
        headers = [(k, v) for k, v in headers if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
    return [
        {**start, "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    ]


async def _send_json(send: Send, status: int, content: dict[str, Any]) -> None:
    body = json.dumps(content).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


@contextlib.contextmanager
def _param(name: str) -> Iterator[None]:
    """Domain errors of a request field (4xx but auth and quota) name that field."""
    try:
        yield
    except EthostralError as exc:
        if exc.status_code in (401, 429) or not 400 <= exc.status_code < 500:
            raise
        raise OpenAIAPIError(openai_status(exc.status_code), exc.detail, param=name) from None


# --- rendering a session ---------------------------------------------------------------


def served_model_id(settings: Settings) -> str:
    """The id of the configured speech model: ``ethostral-whisper-base`` (embedded),
    ``ethostral-voxtral-mini-3b-2507`` (Ethostral on that base, here or on an endpoint)."""
    if settings.speech_model in ("ethostral", "endpoint"):
        name = f"ethostral-{PurePath(settings.ethostral.base_model).name}"
    else:
        name = f"ethostral-whisper-{PurePath(settings.asr.model).name}"
    return re.sub(r"[^a-z0-9._-]+", "-", name.lower()).strip("-")


def _spoken(session: Session) -> list[Segment]:
    return [s for s in session.segments if s.text.strip()]


def transcript_text(session: Session) -> str:
    """The session's text: its segments' texts joined by spaces."""
    return " ".join(s.text.strip() for s in _spoken(session))


def _seconds(ms: int) -> float:
    return round(ms / 1000, 3)


def _usage(session: Session) -> Usage:
    return Usage(seconds=_seconds(session.duration_ms))


def _segment(index: int, seg: Segment) -> TranscriptionSegment:
    logprobs = [math.log(max(w.probability, 1e-10)) for w in seg.words]
    raw = seg.text.encode()
    return TranscriptionSegment(
        id=index,
        seek=seg.start_ms // 10,
        start=_seconds(seg.start_ms),
        end=_seconds(seg.end_ms),
        text=seg.text,
        tokens=[],
        temperature=0.0,
        avg_logprob=round(sum(logprobs) / len(logprobs), 4) if logprobs else 0.0,
        compression_ratio=round(len(raw) / len(zlib.compress(raw)), 4) if raw else 0.0,
        no_speech_prob=0.0,
        speaker=seg.speaker,
        emotion=seg.emotion,
        session_segment_id=seg.id,
    )


def verbose(session: Session, granularities: Sequence[str]) -> TranscriptionVerbose:
    """``verbose_json``: segments and/or words, as ``timestamp_granularities[]`` asks."""
    spoken = _spoken(session)
    segments = (
        [_segment(i, s) for i, s in enumerate(spoken)] if "segment" in granularities else None
    )
    words = None
    if "word" in granularities:
        words = [
            TranscriptionWord(word=w.word, start=_seconds(w.start_ms), end=_seconds(w.end_ms))
            for s in spoken
            for w in s.words
        ]
    return TranscriptionVerbose(
        language=language_name(session.language),
        duration=_seconds(session.duration_ms),
        text=transcript_text(session),
        segments=segments,
        words=words,
        usage=_usage(session),
    )


def diarized(session: Session) -> TranscriptionDiarized:
    """``diarized_json``: the text by speaker, with emotions."""
    return TranscriptionDiarized(
        duration=_seconds(session.duration_ms),
        text=transcript_text(session),
        segments=[
            TranscriptionDiarizedSegment(
                id=s.id,
                start=_seconds(s.start_ms),
                end=_seconds(s.end_ms),
                speaker=s.speaker,
                text=s.text,
                emotion=s.emotion,
            )
            for s in _spoken(session)
        ],
        usage=_usage(session),
    )


def render(
    session: Session, response_format: ResponseFormat, granularities: Sequence[str]
) -> Response:
    """The session in one of OpenAI's response formats."""
    headers = {SESSION_HEADER: session.id}
    if response_format == "text":
        return PlainTextResponse(transcript_text(session) + "\n", headers=headers)
    if response_format == "srt":
        return PlainTextResponse(
            to_srt(session), media_type="application/x-subrip", headers=headers
        )
    if response_format == "vtt":
        return PlainTextResponse(to_vtt(session), media_type="text/vtt", headers=headers)
    body: BaseModel
    if response_format == "verbose_json":
        body = verbose(session, granularities)
        content = body.model_dump(
            exclude={k for k in ("segments", "words") if getattr(body, k) is None}
        )
        return JSONResponse(content, headers=headers)
    if response_format == "diarized_json":
        body = diarized(session)
    else:
        body = Transcription(text=transcript_text(session), usage=_usage(session))
    return JSONResponse(body.model_dump(), headers=headers)


async def stream_events(session: Session, diarize: bool) -> AsyncIterator[str]:
    """Server-sent events of a finished session: one ``transcript.text.delta`` per
    segment in order (with ``diarized_json``, each followed by its
    ``transcript.text.segment``), then ``transcript.text.done``."""
    for i, seg in enumerate(_spoken(session)):
        text = seg.text.strip()
        delta = TextDeltaEvent(delta=text if i == 0 else " " + text)
        if diarize:
            delta.segment_id = seg.id
        yield _sse(delta.model_dump(exclude_none=True))
        if diarize:
            part = TranscriptionDiarizedSegment(
                id=seg.id,
                start=_seconds(seg.start_ms),
                end=_seconds(seg.end_ms),
                speaker=seg.speaker,
                text=seg.text,
                emotion=seg.emotion,
            )
            yield _sse(part.model_dump())
    yield _sse(TextDoneEvent(text=transcript_text(session)).model_dump())


def _sse(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


# --- the routes ------------------------------------------------------------------------

_ERRORS: dict[int, tuple[str, dict[str, Any]]] = {
    400: ("a field is missing or invalid, or the file is not audio FFmpeg can decode", {}),
    401: (
        "missing, unknown or revoked API key (when the server requires keys)",
        {"WWW-Authenticate": {"required": True, "schema": {"type": "string"}}},
    ),
    404: ("no model has this id", {}),
    413: ("the upload is too large or the audio too long", {}),
    429: (
        "over a quota of the API key",
        {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
    ),
    503: (
        "the session store or a model deployment is unavailable",
        {"Retry-After": {"required": True, "schema": {"type": "integer", "minimum": 1}}},
    ),
}


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    out: dict[int | str, dict[str, Any]] = {}
    for code in codes:
        description, headers = _ERRORS[code]
        out[code] = {"model": OpenAIError, "description": description}
        if headers:
            out[code]["headers"] = headers
    return out


_SESSION_HEADERS = {
    SESSION_HEADER: {
        "description": "id of the stored session: `GET /sessions/{id}`",
        "required": True,
        "schema": {"type": "string", "format": "uuid"},
    }
}
_TEXT = {"schema": {"type": "string"}}


def openai_router(uploads: Uploads, settings: Settings) -> APIRouter:
    """``/v1`` routes that run and store uploads as ``POST /transcribe`` does (``uploads``
    of ``create_app``: the same runner, store, key checks, slots, threads and metrics)."""
    runner = uploads.runner
    router = APIRouter(prefix=PREFIX, tags=["OpenAI-compatible"])
    served = served_model_id(settings)
    created = int(time.time())
    models = [Model(id=name, created=created, owned_by=OWNER) for name in (served, WHISPER_ALIAS)]
    languages = list(dict.fromkeys([*DETECT, *runner.model.languages]))

    @router.post(
        "/audio/transcriptions",
        operation_id="create_transcription",
        response_class=Response,
        summary="Transcribe audio (OpenAI-compatible)",
        description="OpenAI's `POST /v1/audio/transcriptions`: any `model` name runs "
        f"the configured speech model (`{served}`). The transcription is stored as a "
        "session, named by the `X-Ethostral-Session-Id` header.",
        responses={
            200: {
                "description": "the transcription in `response_format`; with `stream=true`, "
                "server-sent events (`data:` lines of `transcript.text.delta`, with "
                "`diarized_json` `transcript.text.segment`, then `transcript.text.done`)",
                "model": Transcription | TranscriptionVerbose | TranscriptionDiarized,
                "headers": _SESSION_HEADERS,
                "content": {
                    "text/plain": _TEXT,
                    "application/x-subrip": _TEXT,
                    "text/vtt": _TEXT,
                    "text/event-stream": _TEXT,
                },
            },
            **_error_responses(400, 401, 413, 429, 503),
        },
    )
    async def create_transcription(
        caller: CallerDep,
        file: Annotated[
            UploadFile,
            File(
                description="any audio or video FFmpeg decodes",
                json_schema_extra={"minLength": 1},
            ),
        ],
        # These two name what this server serves: set as defaults, which are evaluated
        # here (annotations are strings, resolved in the module's namespace).
        model: str = Form(
            min_length=1, description=f"any name (e.g. `whisper-1`): the server runs `{served}`"
        ),
        language: str = Form(
            "",
            description="ISO 639-1 code such as 'en'; empty or 'auto': detect",
            json_schema_extra={"enum": languages},
        ),
        prompt: Annotated[str, Form(description="accepted and ignored")] = "",
        response_format: Annotated[ResponseFormat, Form(description="the answer's format")] = (
            "json"
        ),
        temperature: Annotated[
            float, Form(ge=0.0, le=1.0, description="accepted and ignored")
        ] = 0.0,
        granularities: Annotated[
            tuple[Granularity, ...],
            Form(
                alias="timestamp_granularities[]",
                description="with `verbose_json`: `segment` (default) and/or `word` timestamps",
            ),
        ] = ("segment",),
        stream: Annotated[
            bool, Form(description="answer as server-sent events (after the run)")
        ] = False,
        diarize: Annotated[bool, Form(description="extension: tell speakers apart")] = True,
        emotion: Annotated[
            bool, Form(description="extension: emotion per segment; false leaves it null")
        ] = True,
        store_audio: Annotated[
            bool,
            Form(
                description="extension: keep the audio (16 kHz mono Ogg/Opus) for playback "
                "at `GET /sessions/{id}/audio`, deleted and expiring with the session"
            ),
        ] = False,
    ) -> Response:
        with _param("language"):
            code = await asyncio.to_thread(runner.check_language, language)
        await uploads.admit(caller)
        options = TranscribeOptions(language=code, diarize=diarize, emotion=emotion)
        with _param("file"):
            session = await uploads.run(caller, file.file, file.filename, options, store_audio)
        if stream:
            return StreamingResponse(
                stream_events(session, diarize=response_format == "diarized_json"),
                media_type="text/event-stream",
                headers={SESSION_HEADER: session.id, "Cache-Control": "no-cache"},
            )
        return render(session, response_format, granularities)

    @router.get(
        "/models",
        operation_id="list_models",
        response_model=ModelList,
        summary="List the model names served (OpenAI-compatible)",
        responses=_error_responses(401, 503),
    )
    async def list_models() -> ModelList:
        return ModelList(data=models)

    @router.get(
        "/models/{model_id}",
        operation_id="retrieve_model",
        response_model=Model,
        summary="One model name served (OpenAI-compatible)",
        responses=_error_responses(401, 404, 503),
    )
    async def retrieve_model(model_id: str) -> Model:
        for m in models:
            if m.id == model_id:
                return m
        raise OpenAIAPIError(
            404, f"The model '{model_id}' does not exist", param="model", code="model_not_found"
        )

    return router
