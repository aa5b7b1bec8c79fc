"""The blocking client: :class:`Client`, over ``httpx.Client``."""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator
from itertools import chain
from types import TracebackType

import httpx

from ethostral_serve.client.live import AudioInput, iterate_blocking, plan_stream, stream_events
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


class Client:
    """Blocking client of one service (``base_url``, e.g. ``http://127.0.0.1:8000``).

    Every error the service answers with raises :class:`ApiError`; a service that cannot
    be reached raises httpx's ``TransportError`` (a stream: ``OSError``).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout_s: float = 60.0,
        http: httpx.Client | None = None,
        verify: ssl.SSLContext | bool = True,
    ) -> None:
        """``timeout_s`` bounds each wait on the network (job events send a keep-alive
        every 15 s); ``verify``: an ``ssl.SSLContext`` that trusts the server's
        certificate, or False not to check it. ``http``: an httpx client to send through
        instead of one of its own (tests pass FastAPI's ``TestClient``); :meth:`close`
        leaves it open."""
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self._headers = auth_headers(api_key)
        self._timeout_s = timeout_s
        self._verify = verify
        self._own = http is None
        self._http = http or httpx.Client(base_url=self.base_url, timeout=timeout_s, verify=verify)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        if self._own:
            self._http.close()

    def _no_read_timeout(self) -> dict[str, httpx.Timeout]:
        """A synchronous upload waits for the whole run (an injected client: its own)."""
        return {"timeout": httpx.Timeout(self._timeout_s, read=None)} if self._own else {}

    def transcribe(
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
        on_progress: Callable[[Job], None] | None = None,
    ) -> Session:
        """Transcribe a file (a path, bytes or a binary file object) into a stored Session.

        ``as_job`` (the default): upload it as a job and follow its progress, calling
        ``on_progress`` with each state; a failed job raises :class:`ApiError` with the
        status a synchronous upload would have got. ``as_job=False``: one synchronous
        ``POST /transcribe``, which waits as long as the run takes (no read timeout).
        ``store_audio``: the session keeps its audio as 16 kHz mono Ogg/Opus (not the
        file sent), for :meth:`audio`. ``filename``: the name stored with the session
        (default: the file's).
        """
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
            job = self._submit(file, filename, options)
            return self.wait(job.id, on_progress=on_progress)
        if on_progress is not None:
            raise ValueError("on_progress needs as_job=True (a synchronous upload has no progress)")
        with upload_file(file, filename) as part:
            r = self._http.post(
                "/transcribe",
                data=options.form(),
                files={"file": part},
                headers=self._headers,
                **self._no_read_timeout(),
            )
        check(r)
        return Session.model_validate(r.json())

    def submit(
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
        """Upload a file as a job (``async=true``); returns it queued. ``callback_url``:
        the service POSTs the outcome there, signed (see :meth:`callback_secret`)."""
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
        return self._submit(file, filename, options, callback_url)

    def _submit(
        self,
        file: Upload,
        filename: str | None,
        options: UploadOptions,
        callback_url: str | None = None,
    ) -> Job:
        with upload_file(file, filename) as part:
            r = self._http.post(
                "/transcribe",
                data=options.form(as_job=True, callback_url=callback_url),
                files={"file": part},
                headers=self._headers,
            )
        check(r, expected=(202,))
        return Job.model_validate(r.json())

    def job_events(self, job_id: str) -> Iterator[Job]:
        """The job's states as the service sends them (``GET /sessions/{id}/events``),
        until it is done, failed or cancelled; reconnects where it left off."""
        last_id: str | None = None
        failures = 0
        while True:
            headers = {**self._headers, **({"Last-Event-ID": last_id} if last_id else {})}
            try:
                with self._http.stream("GET", f"/sessions/{job_id}/events", headers=headers) as r:
                    if r.status_code != 200:
                        r.read()
                        check(r)
                    parser = EventParser()
                    for line in chain(r.iter_lines(), [""]):  # "" ends a last event
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

    def wait(self, job_id: str, on_progress: Callable[[Job], None] | None = None) -> Session:
        """Follow a job to its end and return its session (:class:`ApiError` when the job
        fails or is cancelled)."""
        for state in self.job_events(job_id):
            if on_progress is not None:
                on_progress(state)
            raise_for_outcome(state)
        return self.get(job_id)

    def get(self, session_id: str) -> Session:
        """The stored session (:class:`ApiError` 202 while its job runs, or the failed
        job's status)."""
        r = self._http.get(f"/sessions/{session_id}", headers=self._headers)
        check(r)
        return Session.model_validate(r.json())

    def delete(self, session_id: str) -> None:
        """Delete a session, or cancel its job."""
        r = self._http.delete(f"/sessions/{session_id}", headers=self._headers)
        check(r, expected=(204,))

    def list_sessions(self, limit: int = 20, cursor: str | None = None) -> SessionList:
        """One page of stored sessions, newest first; its ``next_cursor`` is the
        ``cursor`` of the next page (None on the last)."""
        params = {"limit": limit, **({"cursor": cursor} if cursor else {})}
        r = self._http.get("/sessions", params=params, headers=self._headers)
        check(r)
        return SessionList.model_validate(r.json())

    def iter_sessions(self, page_size: int = 100) -> Iterator[SessionSummary]:
        """Every stored session, newest first, fetched a page at a time."""
        cursor: str | None = None
        while True:
            page = self.list_sessions(limit=page_size, cursor=cursor)
            yield from page.sessions
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def subtitles(self, session_id: str, fmt: SubtitleFormat = "srt") -> str:
        """A stored session as SubRip (``srt``) or WebVTT (``vtt``) subtitles."""
        r = self._http.get(subtitle_path(session_id, fmt), headers=self._headers)
        check(r)
        return r.text

    def audio(self, session_id: str) -> bytes:
        """The audio a session kept (``store_audio=True``): the 16 kHz mono Ogg/Opus
        re-encode the transcript was made from, not the file sent (:class:`ApiError` 404
        when none was kept)."""
        r = self._http.get(f"/sessions/{session_id}/audio", headers=self._headers)
        check(r)
        return r.content

    def callback_secret(self) -> str:
        """The secret that signs this API key's job callbacks."""
        r = self._http.get("/callbacks/secret", headers=self._headers)
        check(r)
        return str(r.json()["secret"])

    def health(self) -> Health:
        """Readiness of the service and of each part; ``status`` 'unavailable' (its 503)
        is an answer, not an error."""
        return health_of(self._http.get("/healthz", headers=self._headers))

    def stream(
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
    ) -> Iterator[StreamEvent]:
        """Stream audio live: the events as they come, ending with the session event.

        What :meth:`AsyncClient.stream <ethostral_serve.client.AsyncClient.stream>` does,
        on an event loop of its own in a thread.
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
        return iterate_blocking(
            lambda: stream_events(target, source, realtime=realtime, speed=speed)
        )
