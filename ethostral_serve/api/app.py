"""The FastAPI application: upload → Session, stored sessions, subtitles, health.

Routes stay thin: the pipeline runs in :class:`~ethostral_serve.runner.PipelineRunner`
(on a worker thread), sessions live in a :class:`SessionStorage`, and domain errors
become JSON ``{"detail": ...}`` responses in one place (:func:`install_error_handlers`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import PurePath
from typing import Annotated, Protocol

from fastapi import FastAPI, File, Form, Header, Query, Request, UploadFile, WebSocket
from fastapi.exception_handlers import http_exception_handler
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from ethostral_serve.api.auth import (
    AUTH_CHALLENGE,
    RETRY_AFTER_S,
    Access,
    AuthMiddleware,
    Caller,
)
from ethostral_serve.api.body_limit import BodyLimitMiddleware
from ethostral_serve.api.caller import CallerDep
from ethostral_serve.api.jobs import Jobs, JobWorker
from ethostral_serve.api.openai_compat import UPLOAD_PATH, OpenAIErrorMiddleware, openai_router
from ethostral_serve.api.openapi import (
    audio_responses,
    error_responses,
    install_openapi,
    subtitle_responses,
)
from ethostral_serve.api.playback import AUDIO_DESCRIPTION, audio_response
from ethostral_serve.api.request_metrics import UploadMetricsMiddleware
from ethostral_serve.api.stream import StreamCapacity, serve_stream
from ethostral_serve.api.uploads import Uploads, upload_filename
from ethostral_serve.api.web import install_web_app
from ethostral_serve.errors import (
    AuthenticationError,
    EthostralError,
    InvalidRequestError,
    SessionNotFoundError,
)
from ethostral_serve.jobs import JobRecord
from ethostral_serve.metrics import NOOP, Metrics
from ethostral_serve.pipeline.compose import TranscribeOptions
from ethostral_serve.pipeline.ports import StreamBackends
from ethostral_serve.pipeline.types import MAX_SPEAKERS, SpeakerCount
from ethostral_serve.quotas import QuotaExceededError
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.schema import (
    CallbackSecret,
    Health,
    Job,
    Session,
    SessionList,
    SessionSummary,
)
from ethostral_serve.sessions import Pipeline, SessionPage, StoredAudio
from ethostral_serve.settings import Settings
from ethostral_serve.subtitles import to_srt, to_vtt

log = logging.getLogger("ethostral_serve.api")

HealthCheck = Callable[[], Awaitable[None]]
UPLOAD_PATHS = ("/transcribe", UPLOAD_PATH)  # the routes that take an upload's body

API_DESCRIPTION = """\
Diarized, emotion-annotated transcription. Upload audio or video to
`POST /transcribe`; the stored session can be fetched, exported as subtitles and
deleted under `/sessions/{id}`. Every error is JSON `{"detail": "..."}`, saying what
was wrong in words; a 422 from FastAPI's own validation lists the invalid values instead
(`{"detail": [{"loc", "msg", "type", ...}]}`).

**OpenAI-compatible: `POST /v1/audio/transcriptions`, `GET /v1/models`.** OpenAI's
audio transcription API (its SDKs work with `base_url=<server>/v1`); errors under `/v1`
take OpenAI's shape `{"error": {"message", "type", "param", "code"}}`.

**Live streaming: `WS /transcribe/stream`.** Query parameters `sample_rate` (default
16000), `encoding` (`pcm_s16le` default, or `pcm_f32le`), `language`, `diarize`,
`emotion`, `adapter`, `filename`, `num_speakers` / `min_speakers` / `max_speakers`,
`store_audio` (keep the audio for `GET /sessions/{id}/audio`) (or the same in a first
text message `{"type": "start", ...}`).
Send binary frames of mono PCM of any size, then `{"type": "stop"}`. The server sends
JSON events `{"type": "partial" | "final", "segment_id", "speaker", "text",
"start_ms", "end_ms", "emotion"}`: partials while an utterance is spoken (same
`segment_id`, text may change, provisional speaker, `emotion` null), one final when
it ends (stable speaker, emotion); events of neighbouring utterances may interleave,
so match them on `segment_id`. `language` empty or `auto` (the default): detected.
After `stop`: `{"type": "session", "session_id"}` and a normal close (1000). Errors:
`{"type": "error", "detail"}`, then close 1003 (text that is not start/stop JSON),
1007 (NaN/inf audio), 1008 (bad parameters, idle too long, stream too long), 1009
(frame too large), 1013 (session store down, a model replica died, or the server's
live-stream limit reached: try again later), 4401 (missing, unknown or revoked API key)
or 4429 (over a quota of the key). The session is stored on stop and on an abrupt disconnect.

**API keys** (when the server runs with `auth.required`): send `Authorization: Bearer
<key>`; a WebSocket may instead offer the subprotocols `token, <key>`. Sessions belong to
the key that made them: other keys get 404. Over a quota: 429 with `Retry-After`.
"""


class SessionStorage(Protocol):
    """Where sessions are kept (:class:`ethostral_serve.sessions.SessionStore`).

    ``owner`` is the API key id of the caller: with it, only that key's sessions are
    seen; None (auth off) sees every session.
    """

    async def save(
        self, session: Session, owner: str | None = None, audio: bytes | None = None
    ) -> None:
        """Store a session under its id, owned by ``owner``, with its kept ``audio``."""
        ...

    def add_save(
        self, tx: Pipeline, session: Session, owner: str | None = None, audio: bytes | None = None
    ) -> None:
        """Queue the writes of ``save`` on a Redis ``MULTI`` pipeline (jobs)."""
        ...

    async def audio(self, session_id: str, owner: str | None = None) -> StoredAudio:
        """A session's kept audio; raises ``SessionNotFoundError`` / ``AudioNotKeptError``."""
        ...

    def read_audio(self, audio: StoredAudio, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive) of kept audio, a chunk at a time."""
        ...

    async def get(self, session_id: str, owner: str | None = None) -> Session:
        """The stored session; raises ``SessionNotFoundError``."""
        ...

    async def delete(self, session_id: str, owner: str | None = None) -> None:
        """Remove a session; raises ``SessionNotFoundError``."""
        ...

    async def list(
        self, owner: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> SessionPage:
        """Sessions newest first, a page at a time."""
        ...

    async def ping(self) -> None:
        """Raise ``StoreUnavailableError`` unless the store answers."""
        ...


def speaker_count(num: int | None, minimum: int | None, maximum: int | None) -> SpeakerCount | None:
    """The request's speaker count (None when none was given); 422 when inconsistent."""
    try:
        count = SpeakerCount(num=num, min=minimum, max=maximum)
    except ValueError as exc:
        raise InvalidRequestError(str(exc)) from None
    return count if count.given else None


def create_app(
    runner: PipelineRunner,
    store: SessionStorage,
    settings: Settings,
    health_checks: Mapping[str, HealthCheck] | None = None,
    stream_backends: StreamBackends | None = None,
    access: Access | None = None,
    jobs: Jobs | None = None,
    metrics: Metrics | None = None,
) -> FastAPI:
    """The HTTP API over a pipeline runner and a session store (+ live streams); ``access``
    checks API keys and quotas (None: open, which ``auth.required`` forbids); ``jobs``
    takes asynchronous uploads and runs them while the app is up (None: no ``async``);
    ``metrics`` counts uploads and streams (None: nothing is recorded)."""
    access = access or Access()
    metrics = metrics or NOOP
    if settings.auth.required and not access.required:
        raise ValueError("auth.required is on but no key store was given (Access.from_settings)")
    # Each upload holds a thread while the pipeline runs (asyncio's default pool has
    # only cores + 4), so uploads get their own pool; jobs share it.
    runs = ThreadPoolExecutor(
        max_workers=settings.limits.max_concurrent_runs, thread_name_prefix="transcribe"
    )
    worker = JobWorker(jobs, runner, store, access, runs) if jobs is not None else None
    uploads = Uploads(runner, store, access, runs, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        if worker is not None:
            worker.start()
        try:
            yield
        finally:
            if worker is not None:
                await worker.stop()

    app = FastAPI(
        title="ethostral-serve",
        description=API_DESCRIPTION,
        version="0.1.0",
        lifespan=lifespan,
    )
    max_bytes = int(settings.limits.max_upload_mb * 1_000_000)
    app.add_middleware(
        BodyLimitMiddleware,
        max_bytes=max_bytes,
        paths=UPLOAD_PATHS,
        detail=lambda n: (
            f"upload is larger than the {n / 1e6:g} MB limit (ETHOSTRAL_LIMITS__MAX_UPLOAD_MB)"
        ),
    )
    if access.required:  # outermost: no body is read before the key is checked
        app.add_middleware(AuthMiddleware, access=access)
    app.add_middleware(OpenAIErrorMiddleware)  # /v1 errors in OpenAI's shape, auth's too
    # outermost of all: every upload's final status, 401 and 413 included
    app.add_middleware(UploadMetricsMiddleware, metrics=metrics, paths=UPLOAD_PATHS)
    install_error_handlers(app)
    checks: dict[str, HealthCheck] = {"store": store.ping, **(health_checks or {})}
    app.state.access = access
    install_openapi(
        app, runner.model.languages, runner.model.adapters, access.required, jobs is not None
    )

    @app.post(
        "/transcribe",
        operation_id="transcribe",
        response_model=Session,
        summary="Transcribe an audio or video file",
        responses={
            202: {
                "model": Job,
                "description": "queued as a job (`async=true`, `callback_url` or `Prefer: "
                "respond-async`): poll `Location`, or follow its `/events`",
                "headers": _JOB_HEADERS,
            },
            **error_responses(400, 401, 413, 415, 422, 429, 503),
        },
    )
    async def transcribe(
        caller: CallerDep,
        file: Annotated[UploadFile, File(description="any audio or video FFmpeg decodes")],
        language: Annotated[
            str | None,
            Form(description="ISO 639-1 code such as 'en' (any case); empty or 'auto': detect"),
        ] = None,
        diarize: Annotated[bool, Form(description="tell speakers apart")] = True,
        emotion: Annotated[
            bool, Form(description="emotion per segment; false leaves `emotion` null")
        ] = True,
        adapter: Annotated[
            str | None,
            Form(
                description="a named fine-tune of the speech model (ETHOSTRAL_ETHOSTRAL__"
                "ADAPTERS); empty: the default"
            ),
        ] = None,
        num_speakers: Annotated[
            int | None,
            Form(ge=1, le=MAX_SPEAKERS, description="exactly this many speakers (diarization)"),
        ] = None,
        min_speakers: Annotated[
            int | None, Form(ge=1, le=MAX_SPEAKERS, description="at least this many speakers")
        ] = None,
        max_speakers: Annotated[
            int | None, Form(ge=1, le=MAX_SPEAKERS, description="at most this many speakers")
        ] = None,
        run_async: Annotated[
            bool,
            Form(
                alias="async",
                description="answer 202 at once with a job; the session follows at "
                "`GET /sessions/{id}` (also `Prefer: respond-async`)",
            ),
        ] = False,
        callback_url: Annotated[
            str | None,
            Form(
                description="run as a job and POST `{job, session}` here when it ends, "
                "signed (`X-Ethostral-Signature`, see `GET /callbacks/secret`)"
            ),
        ] = None,
        prefer: Annotated[
            str | None, Header(description="`respond-async`: run as a job (RFC 7240)")
        ] = None,
        store_audio: Annotated[
            bool,
            Form(
                description="keep the audio (16 kHz mono Ogg/Opus) for playback at "
                "`GET /sessions/{id}/audio`, deleted and expiring with the session"
            ),
        ] = False,
    ) -> Session | JSONResponse:
        speakers = speaker_count(num_speakers, min_speakers, max_speakers)
        code = await asyncio.to_thread(runner.check_language, language)
        named = await asyncio.to_thread(runner.check_adapter, adapter)
        await uploads.admit(caller)
        options = TranscribeOptions(
            language=code, diarize=diarize, emotion=emotion, adapter=named, speakers=speakers
        )
        prefers_async = _prefers_async(prefer)
        if run_async or prefers_async or callback_url:
            if jobs is None:
                raise InvalidRequestError("this server does not run asynchronous jobs")
            job = await jobs.submit(
                file.file,
                upload_filename(file.filename),
                options,
                caller,
                callback_url or None,
                store_audio,
            )
            headers = _job_headers(job)
            if prefers_async:
                headers["Preference-Applied"] = "respond-async"
            return JSONResponse(job.model_dump(), status_code=202, headers=headers)
        return await uploads.run(caller, file.file, file.filename, options, store_audio)

    @app.get(
        "/sessions",
        operation_id="list_sessions",
        response_model=SessionList,
        summary="List stored sessions, newest first",
        responses=error_responses(401, 422, 503),
    )
    async def list_sessions(
        caller: CallerDep,
        limit: Annotated[int, Query(ge=1, le=100, description="sessions per page")] = 20,
        cursor: Annotated[
            str | None,
            Query(description="`next_cursor` of the previous page; empty: the first page"),
        ] = None,
    ) -> SessionList:
        page = await store.list(owner=caller.owner, limit=limit, cursor=cursor)
        return SessionList(
            sessions=[SessionSummary.of(s) for s in page.sessions], next_cursor=page.next_cursor
        )

    @app.get(
        "/sessions/{session_id}",
        operation_id="get_session",
        response_model=Session,
        summary="Fetch a stored session, or the state of its job",
        responses={
            202: {
                "model": Job,
                "description": "its job is queued or running: the job's state",
                "headers": _JOB_HEADERS,
            },
            **error_responses(401, 404, 503),
            "default": {
                "model": Job,
                "description": "its job failed: the job's state (with `detail`), under the "
                "status a synchronous upload would have got (415, 413, 503, ...)",
            },
        },
    )
    async def get_session(caller: CallerDep, session_id: str) -> Session | JSONResponse:
        sid = _session_id(session_id)
        record = await _job_of(sid, caller)
        if record is not None:
            job = record.job
            if job.status in ("queued", "running"):
                return JSONResponse(job.model_dump(), status_code=202, headers=_job_headers(job))
            if job.status == "failed":
                return JSONResponse(job.model_dump(), status_code=job.status_code or 500)
        return await store.get(sid, owner=caller.owner)

    @app.delete(
        "/sessions/{session_id}",
        operation_id="delete_session",
        status_code=204,
        summary="Delete a stored session, or cancel and delete its job",
        responses=error_responses(401, 404, 503),
    )
    async def delete_session(caller: CallerDep, session_id: str) -> Response:
        sid = _session_id(session_id)
        record = await _job_of(sid, caller)
        if record is not None and jobs is not None and record.job.status != "cancelled":
            status = record.job.status
            if status in ("queued", "running"):
                status = await jobs.cancel(record)  # or what it became meanwhile
                if status in ("queued", "running", "cancelled", None):
                    return Response(status_code=204)
            try:
                if status == "done":
                    await store.delete(sid, owner=caller.owner)
            finally:
                await jobs.store.forget(sid)
            return Response(status_code=204)
        await store.delete(sid, owner=caller.owner)
        return Response(status_code=204)

    @app.get(
        "/sessions/{session_id}/events",
        operation_id="session_events",
        response_class=StreamingResponse,
        summary="Follow a job's progress as server-sent events",
        responses={
            200: {
                "description": "`text/event-stream`: one event per state of the job "
                "(`event:` its status: queued, running, done, failed or cancelled; "
                "`data:` the Job as JSON; `id:` for `Last-Event-ID`), ending after done, "
                "failed or cancelled. A session made without a job gives one `done`. "
                "If the store fails meanwhile, an `error` event (`data:` `{detail}`) ends "
                "the stream.",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **error_responses(401, 404, 422, 503),
        },
    )
    async def session_events(
        caller: CallerDep,
        session_id: str,
        last_event_id: Annotated[
            str | None,
            Header(
                alias="Last-Event-ID",
                pattern=r"^[0-9]{1,19}(-[0-9]{1,19})?$",
                description="resume after this event",
            ),
        ] = None,
    ) -> StreamingResponse:
        sid = _session_id(session_id)
        record = await _job_of(sid, caller)
        if jobs is None or record is None or record.job.status == "cancelled":
            session = await store.get(sid, owner=caller.owner)
            return _event_stream(_one_event(_done_job(session)))
        return _event_stream(_job_events(jobs, sid, caller.owner, last_event_id))

    if jobs is not None:

        @app.get(
            "/callbacks/secret",
            operation_id="callback_secret",
            response_model=CallbackSecret,
            summary="The secret that signs this API key's job callbacks",
            responses=error_responses(401, 503),
        )
        async def callback_secret(caller: CallerDep) -> CallbackSecret:
            return CallbackSecret(secret=await jobs.callback_secret(caller.owner))

    async def _job_of(session_id: str, caller: Caller) -> JobRecord | None:
        return None if jobs is None else await jobs.get(session_id, caller.owner)

    @app.get(
        "/sessions/{session_id}/srt",
        operation_id="session_srt",
        response_class=Response,
        summary="A stored session as SubRip subtitles",
        responses=subtitle_responses("application/x-subrip", "the session as SubRip (.srt)"),
    )
    async def session_srt(caller: CallerDep, session_id: str) -> Response:
        session = await store.get(_session_id(session_id), owner=caller.owner)
        return _subtitle(to_srt(session), session, "srt", "application/x-subrip")

    @app.get(
        "/sessions/{session_id}/vtt",
        operation_id="session_vtt",
        response_class=Response,
        summary="A stored session as WebVTT subtitles",
        responses=subtitle_responses("text/vtt", "the session as WebVTT (.vtt)"),
    )
    async def session_vtt(caller: CallerDep, session_id: str) -> Response:
        session = await store.get(_session_id(session_id), owner=caller.owner)
        return _subtitle(to_vtt(session), session, "vtt", "text/vtt")

    @app.get(
        "/sessions/{session_id}/audio",
        operation_id="session_audio",
        response_class=Response,
        summary="A stored session's audio, if it was kept (store_audio)",
        description=AUDIO_DESCRIPTION,
        responses=audio_responses(),
    )
    async def session_audio(
        caller: CallerDep,
        session_id: str,
        range_header: Annotated[
            str | None, Header(alias="Range", description="`bytes=FIRST-LAST` (RFC 9110)")
        ] = None,
        if_range: Annotated[
            str | None,
            Header(
                alias="If-Range",
                description="this server gives no validators, so none matches: the whole file",
            ),
        ] = None,
    ) -> Response:
        sid = _session_id(session_id)
        return await audio_response(store, sid, caller.owner, range_header, if_range, False)

    @app.head("/sessions/{session_id}/audio", include_in_schema=False)
    async def session_audio_head(
        caller: CallerDep,
        session_id: str,
        range_header: Annotated[str | None, Header(alias="Range")] = None,
        if_range: Annotated[str | None, Header(alias="If-Range")] = None,
    ) -> Response:
        sid = _session_id(session_id)
        return await audio_response(store, sid, caller.owner, range_header, if_range, True)

    if stream_backends is not None:
        capacity = StreamCapacity(settings.stream.max_streams, metrics)

        @app.websocket("/transcribe/stream")
        async def transcribe_stream(websocket: WebSocket) -> None:
            await serve_stream(websocket, stream_backends, store, settings, capacity, access)

    @app.get(
        "/healthz",
        operation_id="healthz",
        response_model=Health,
        summary="Ready when every deployment and the session store answer",
        responses={503: {"model": Health, "description": "something is not ready"}},
    )
    async def healthz() -> JSONResponse:
        # Behind API keys /healthz is open to anyone: it names what failed, not how.
        results = await asyncio.gather(
            *(_check(fn, detailed=not access.required) for fn in checks.values())
        )
        report = dict(zip(checks, results, strict=True))
        ok = all(v == "ok" for v in report.values())
        body = Health(status="ok" if ok else "unavailable", checks=report)
        return JSONResponse(body.model_dump(), status_code=200 if ok else 503)

    app.include_router(openai_router(uploads, settings))
    install_web_app(app)  # the web page at / and its assets: after every API route
    return app


_JOB_HEADERS = {
    "Location": {
        "description": "where the session will be: `/sessions/{id}`",
        "required": True,
        "schema": {"type": "string"},
    }
}
TERMINAL = ("done", "failed", "cancelled")
KEEPALIVE_S = 15.0
RECHECK_S = 5.0


def _prefers_async(prefer: str | None) -> bool:
    """Whether a ``Prefer`` header asks for ``respond-async`` (RFC 7240)."""
    if not prefer:
        return False
    tokens = (p.split(";", 1)[0].strip().lower() for p in prefer.split(","))
    return "respond-async" in tokens


def _job_headers(job: Job) -> dict[str, str]:
    return {"Location": f"/sessions/{job.id}", "Retry-After": "2"}


def _done_job(session: Session) -> Job:
    """A finished job standing for a session that has none (a synchronous upload)."""
    return Job(
        id=session.id,
        status="done",
        progress=1.0,
        filename=session.filename,
        created_at=session.created_at,
        updated_at=session.created_at,
    )


def _sse(job: Job, event_id: str | None = None) -> str:
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {job.status}\ndata: {job.model_dump_json()}\n\n"


async def _one_event(job: Job) -> AsyncIterator[str]:
    yield _sse(job)


async def _job_events(
    jobs: Jobs, job_id: str, owner: str | None, after: str | None
) -> AsyncIterator[str]:
    """A job's events from its stream until it ends; keep-alive comments meanwhile, and
    the job's state read directly now and then in case an event was lost."""
    idle_s = 0.0
    try:
        async for item in jobs.store.events(job_id, after=after, block_s=1.0):
            if item is not None:
                idle_s = 0.0
                event_id, job = item
                yield _sse(job, event_id)
                if job.status in TERMINAL:
                    return
                continue
            idle_s += 1.0
            if idle_s % KEEPALIVE_S == 0:
                yield ": keep-alive\n\n"
            if idle_s % RECHECK_S == 0:
                record = await jobs.get(job_id, owner)
                if record is None:
                    return
                if record.job.status in TERMINAL:
                    yield _sse(record.job)
                    return
    except EthostralError as exc:
        yield f"event: error\ndata: {json.dumps({'detail': exc.detail})}\n\n"


def _event_stream(events: AsyncIterator[str]) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Domain errors → their status with ``detail``; anything else → an opaque 500."""

    @app.exception_handler(EthostralError)
    async def domain_error(request: Request, exc: EthostralError) -> JSONResponse:
        headers = None
        if exc.status_code == 503:
            headers = {"Retry-After": str(RETRY_AFTER_S)}
        elif isinstance(exc, QuotaExceededError):
            headers = {"Retry-After": str(exc.retry_after_s)}
        elif isinstance(exc, AuthenticationError):
            headers = {"WWW-Authenticate": AUTH_CHALLENGE}
        if exc.status_code >= 500 and exc.status_code != 503:
            return _internal_error(request, exc)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=headers)

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        return _internal_error(request, exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            # Starlette names the methods of the first route on the path only; a path
            # served by several routes (GET and DELETE /sessions/{id}) allows them all;
            # routes of an included router (/v1) are seen through Starlette's own header.
            named = (exc.headers or {}).get("Allow", "")
            allowed = sorted({*_allowed_methods(request), *filter(None, named.split(", "))})
            exc = StarletteHTTPException(405, exc.detail, headers={"Allow": ", ".join(allowed)})
        return await http_exception_handler(request, exc)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app serves on the request's path."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match is not Match.NONE:
            methods |= getattr(route, "methods", None) or set()
    return sorted(methods)


def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    error_id = uuid.uuid4().hex[:12]
    log.error("error %s on %s %s", error_id, request.method, request.url.path, exc_info=exc)
    return JSONResponse(
        {"detail": f"internal error (id {error_id}); the server log has the details"},
        status_code=500,
    )


def _session_id(raw: str) -> str:
    """Session ids are UUIDs; anything else cannot name a session."""
    try:
        return str(uuid.UUID(raw))
    except ValueError:
        raise SessionNotFoundError(f"no session with id {raw!r} (ids are UUIDs)") from None


def _subtitle(text: str, session: Session, ext: str, media_type: str) -> Response:
    stem = PurePath(session.filename).stem or session.id
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in stem)
    return PlainTextResponse(
        text,
        media_type=media_type,
        headers={"Content-Disposition": f'inline; filename="{safe}.{ext}"'},
    )


HEALTH_TIMEOUT_S = 5.0


async def _check(fn: HealthCheck, detailed: bool = True) -> str:
    try:
        await asyncio.wait_for(fn(), timeout=HEALTH_TIMEOUT_S)
    except TimeoutError:
        return (
            f"no answer within {HEALTH_TIMEOUT_S:g} s: no replica is ready (starting, "
            "being replaced after a crash, or overloaded)"
        )
    except Exception as exc:  # a health check reports, it does not raise
        if not detailed:
            log.warning("health check failed: %r", exc)
            return "unavailable (the server log has the details)"
        return f"{type(exc).__name__}: {exc}"[:200] or type(exc).__name__
    return "ok"
