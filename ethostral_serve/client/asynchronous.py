"""The asyncio client: :class:`AsyncClient`, over ``httpx.AsyncClient`` and ``websockets``."""

from __future__ import annotations

import inspect
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

import httpx

from ethostral_serve.client.live import AudioInput, plan_stream, stream_events
from ethostral_serve.client.protocol import (
    DROPPED,
    RECONNECTS,
    TERMINAL,
    EventParser,
    SubtitleFormat,
    Upload,
    UploadOptions,
    auth_headers,
    check,
    health_of,
    job_of,
    raise_for_outcome,
    subtitle_path,
    upload_file,
)
from ethostral_serve.schema import Health, Job, Session, SessionList, SessionSummary, StreamEvent

Progress = Callable[[Job], None] | Callable[[Job], Awaitable[None]]


class AsyncClient:
    """Asyncio client of one service; the methods of :class:`Client`, awaited, plus live
    streaming (:meth:`stream`).

    Every error the service answers with raises :class:`ApiError`; a service that cannot
    be reached raises httpx's ``TransportError`` (a stream: ``OSError``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        http: httpx.AsyncClient | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """As :class:`Client`; ``http``: an ``httpx.AsyncClient`` to send through (e.g.
        over ``httpx.ASGITransport(app)``), left open by :meth:`aclose`."""
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = auth_headers(api_key)
        self._timeout_s = timeout_s
        self._verify = verify
        self._own = http is None
        self._http = http or httpx.AsyncClient(
            base_url=self.base_url, timeout=timeout_s, verify=verify
        )

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connections."""
        if self._own:
            await self._http.aclose()

    def _no_read_timeout(self) -> dict[str, httpx.Timeout]:
        """A synchronous upload waits for the whole run (an injected client: its own)."""
        return {"timeout": httpx.Timeout(self._timeout_s, read=None)} if self._own else {}

    async def transcribe(
        self,
        file: Upload,
        *,
        language: str | None = None,
        diarize: bool = True,
        emotion: bool = True,
        adapter: str | None = None,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        store_audio: bool = False,
        filename: str | None = None,
        as_job: bool = True,
        on_progress: Progress | None = None,
    ) -> Session:
        """As :meth:`Client.transcribe`; ``on_progress`` may also be a coroutine function.
        For the job's states as an async iterator instead: :meth:`submit`, then
        :meth:`job_events`."""
        options = UploadOptions(
            language=language,
            diarize=diarize,
            emotion=emotion,
            adapter=adapter,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            store_audio=store_audio,
        )
        if as_job:
            job = await self._submit(file, filename, options)
            return await self.wait(job.id, on_progress=on_progress)
        if on_progress is not None:
            raise ValueError("on_progress needs as_job=True (a synchronous upload has no progress)")
        with upload_file(file, filename) as part:
            r = await self._http.post(
                "/transcribe",
                data=options.form(),
                files={"file": part},
                headers=self._headers,
                **self._no_read_timeout(),
            )
        check(r)
        return Session.model_validate(r.json())

    async def submit(
        self,
        file: Upload,
        *,
        language: str | None = None,
        diarize: bool = True,
        emotion: bool = True,
        adapter: str | None = None,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        store_audio: bool = False,
        filename: str | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Upload a file as a job (``async=true``); returns it queued."""
        options = UploadOptions(
            language=language,
            diarize=diarize,
            emotion=emotion,
            adapter=adapter,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            store_audio=store_audio,
        )
        return await self._submit(file, filename, options, callback_url)

    async def _submit(
        self,
        file: Upload,
        filename: str | None,
        options: UploadOptions,
        callback_url: str | None = None,
    ) -> Job:
        with upload_file(file, filename) as part:
            r = await self._http.post(
                "/transcribe",
                data=options.form(as_job=True, callback_url=callback_url),
                files={"file": part},
                headers=self._headers,
            )
        check(r, expected=(202,))
        return Job.model_validate(r.json())

    async def job_events(self, job_id: str) -> AsyncIterator[Job]:
        """The job's states as the service sends them, until it is done, failed or
        cancelled; reconnects where it left off."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {**self._headers, **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                async with self._http.stream(
                    "GET", f"/sessions/{job_id}/events", headers=headers
                ) as r:
                    if r.status_code != 200:
                        await r.aread()
                        check(r)
                    parser = EventParser()
                    async for line in _lines_then_end(r):
                        if (event := parser.feed(line)) is None:
                            continue
                        failures = 0
                        last_id = event.id or last_id
                        job = job_of(event)
                        yield job
                        if job.status in TERMINAL:
                            return
            except DROPPED:
                failures += 1  # a dropped connection: resume after the last event
                if failures > RECONNECTS:
                    raise

    async def wait(self, job_id: str, on_progress: Progress | None = None) -> Session:
        """Follow a job to its end and return its session (:class:`ApiError` when the job
        fails or is cancelled)."""
        async for state in self.job_events(job_id):
            if on_progress is not None:
                result = on_progress(state)
                if inspect.isawaitable(result):
                    await result
            raise_for_outcome(state)
        return await self.get(job_id)

    async def get(self, session_id: str) -> Session:
        """The stored session (:class:`ApiError` 202 while its job runs, or the failed
        job's status)."""
        r = await self._http.get(f"/sessions/{session_id}", headers=self._headers)
        check(r)
        return Session.model_validate(r.json())

    async def delete(self, session_id: str) -> None:
        """Delete a session, or cancel its job."""
        r = await self._http.delete(f"/sessions/{session_id}", headers=self._headers)
        check(r, expected=(204,))

    async def list_sessions(self, limit: int = 20, cursor: str | None = None) -> SessionList:
        """One page of stored sessions, newest first; its ``next_cursor`` is the
        ``cursor`` of the next page (None on the last)."""
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = await self._http.get("/sessions", params=params, headers=self._headers)
        check(r)
        return SessionList.model_validate(r.json())

    async def iter_sessions(self, page_size: int = 100) -> AsyncIterator[SessionSummary]:
        """Every stored session, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = await self.list_sessions(limit=page_size, cursor=cursor)
            for summary in page.sessions:
                yield summary
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def subtitles(self, session_id: str, fmt: SubtitleFormat = "srt") -> str:
        """A stored session as SubRip (``srt``) or WebVTT (``vtt``) subtitles."""
        r = await self._http.get(subtitle_path(session_id, fmt), headers=self._headers)
        check(r)
        return r.text

    async def audio(self, session_id: str) -> bytes:
        """The audio a session kept (``store_audio=True``): the 16 kHz mono Ogg/Opus
        re-encode the transcript was made from, not the file sent (:class:`ApiError` 404
        when none was kept)."""
        r = await self._http.get(f"/sessions/{session_id}/audio", headers=self._headers)
        check(r)
        return r.content

    async def callback_secret(self) -> str:
        """The secret that signs this API key's job callbacks."""
        r = await self._http.get("/callbacks/secret", headers=self._headers)
        check(r)
        return str(r.json()["secret"])

    async def health(self) -> Health:
        """Readiness of the service and of each part; ``status`` 'unavailable' (its 503)
        is an answer, not an error."""
        return health_of(await self._http.get("/healthz", headers=self._headers))

    async def stream(
        self,
        audio: AudioInput,
        *,
        sample_rate: int | None = None,
        encoding: str = "pcm_s16le",
        language: str | None = None,
        diarize: bool = True,
        emotion: bool = True,
        adapter: str | None = None,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        store_audio: bool = False,
        filename: str | None = None,
        realtime: bool = False,
        speed: float = 1.0,
        chunk_ms: int = 100,
        key_in_subprotocol: bool = False,
    ) -> AsyncIterator[StreamEvent]:
        """Stream audio live (``WS /transcribe/stream``): yield the events as they come
        (:class:`PartialEvent`, :class:`FinalEvent`, :class:`ErrorEvent`), ending with the
        :class:`SessionEvent` once the session is stored.

        ``audio``: a 16-bit PCM WAV file's path (its rate is sent; several channels are
        averaged), raw PCM bytes (sent in ``chunk_ms`` pieces), or an iterable or async
        iterable of PCM chunks in ``encoding`` (``pcm_s16le`` or ``pcm_f32le``) at
        ``sample_rate`` (default 16000). After the audio, ``{"type": "stop"}`` is sent.
        ``realtime``: send at ``speed`` times real time, as a microphone would (default:
        as fast as the socket takes it). ``key_in_subprotocol``: send the API key as the
        subprotocols ``token, <key>`` instead of an ``Authorization`` header.
        ``store_audio``: the session keeps the stream's audio (16 kHz mono Ogg/Opus), for
        :meth:`audio`.

        A close without the session event raises :class:`StreamError` (code, reason,
        ``detail`` and ``session_id`` of the error event, which is yielded first); a
        refused handshake raises :class:`ApiError`; no server, ``OSError``. Break out of
        the loop (or ``aclose()`` the iterator) to end the stream early: the server
        stores what was finalised.
        """
        source, target = plan_stream(
            self.base_url,
            self._api_key,
            self._verify,
            self._timeout_s,
            audio,
            sample_rate=sample_rate,
            encoding=encoding,
            chunk_ms=chunk_ms,
            key_in_subprotocol=key_in_subprotocol,
            language=language,
            diarize=diarize,
            emotion=emotion,
            adapter=adapter,
            num_speakers=num_speakers,
            min_speakers=min_speakers,
            max_speakers=max_speakers,
            filename=filename,
            store_audio=store_audio,
        )
        events = stream_events(target, source, realtime=realtime, speed=speed)
        try:
            async for event in events:
                yield event
        finally:
            await events.aclose()  # type: ignore[attr-defined]


async def _lines_then_end(r: httpx.Response) -> AsyncIterator[str]:
    """The body's lines, then an empty one (which completes a last event)."""
    async for line in r.aiter_lines():
        yield line
    yield ""
