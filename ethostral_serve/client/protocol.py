"""What the blocking and the asyncio clients share: request forms, reading answers, errors."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal

import httpx

from ethostral_serve.http_dates import retry_after_seconds
from ethostral_serve.schema import Health, Job

TERMINAL = ("done", "failed", "cancelled")
RECONNECTS = 5  # consecutive dropped connections an event stream survives
SUBTITLE_FORMATS = ("srt", "vtt")

Upload = str | os.PathLike[str] | bytes | IO[bytes]
"""A file to upload: a path, its bytes, or a binary file object (read from where it is)."""

SubtitleFormat = Literal["srt", "vtt"]


class ApiError(Exception):
    """An error response of the service: its status, ``detail`` and, on 429 and 503, the
    seconds its ``Retry-After`` header asks to wait (else None)."""

    def __init__(self, status_code: int, detail: str, retry_after_s: float | None = None) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail
        self.retry_after_s = retry_after_s


@dataclass(frozen=True)
class UploadOptions:
    """How an upload is transcribed (None: the server's default)."""

    language: str | None = None
    diarize: bool = True
    emotion: bool = True
    adapter: str | None = None
    num_speakers: int | None = None
    min_speakers: int | None = None
    max_speakers: int | None = None
    store_audio: bool = False

    def form(self, as_job: bool = False, callback_url: str | None = None) -> dict[str, str]:
        """The form fields of ``POST /transcribe``."""
        data = {"diarize": _flag(self.diarize), "emotion": _flag(self.emotion)}
        if as_job:
            data["async"] = "true"
        if self.store_audio:  # only when asked: servers without stored audio never see it
            data["store_audio"] = "true"
        for name, value in (
            ("language", self.language),
            ("adapter", self.adapter),
            ("num_speakers", self.num_speakers),
            ("min_speakers", self.min_speakers),
            ("max_speakers", self.max_speakers),
            ("callback_url", callback_url),
        ):
            if value is not None:
                data[name] = str(value)
        return data


@contextlib.contextmanager
def upload_file(file: Upload, filename: str | None) -> Iterator[tuple[str, Any]]:
    """``(name, content)`` for httpx's ``files=``; a path is opened here and closed after."""
    if isinstance(file, str | os.PathLike):
        path = Path(file)
        with path.open("rb") as f:
            yield filename or path.name, f
    elif isinstance(file, bytes | bytearray | memoryview):
        yield filename or "upload", bytes(file)
    else:
        name = getattr(file, "name", None)
        yield filename or (Path(name).name if isinstance(name, str) else "upload"), file


def stream_params(
    *,
    sample_rate: int,
    encoding: str,
    language: str | None,
    diarize: bool,
    emotion: bool,
    adapter: str | None,
    num_speakers: int | None,
    min_speakers: int | None,
    max_speakers: int | None,
    filename: str | None,
    store_audio: bool = False,
) -> dict[str, str]:
    """The query parameters of ``WS /transcribe/stream``."""
    params = {
        "sample_rate": str(sample_rate),
        "encoding": encoding,
        "diarize": _flag(diarize),
        "emotion": _flag(emotion),
    }
    if store_audio:  # only when asked, as for an upload
        params["store_audio"] = "true"
    for name, value in (
        ("language", language),
        ("adapter", adapter),
        ("num_speakers", num_speakers),
        ("min_speakers", min_speakers),
        ("max_speakers", max_speakers),
        ("filename", filename),
    ):
        if value is not None:
            params[name] = str(value)
    return params


def subtitle_path(session_id: str, fmt: str) -> str:
    """``/sessions/{id}/srt`` or ``/vtt``; ValueError for another format."""
    if fmt not in SUBTITLE_FORMATS:
        raise ValueError(f"subtitle format must be 'srt' or 'vtt', not {fmt!r}")
    return f"/sessions/{session_id}/{fmt}"


def auth_headers(api_key: str | None) -> dict[str, str]:
    """The ``Authorization`` header that sends ``api_key`` (none without a key)."""
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def websocket_url(base_url: str | httpx.URL, path: str, params: dict[str, str]) -> str:
    """``ws://`` (or ``wss://``) URL of ``path`` under the service's HTTP base URL."""
    base = httpx.URL(str(base_url).rstrip("/"))
    scheme = {"http": "ws", "https": "wss"}.get(base.scheme, base.scheme)
    return str(base.copy_with(scheme=scheme, path=base.path.rstrip("/") + path, params=params))


def check(r: httpx.Response, expected: tuple[int, ...] = (200,)) -> None:
    """Raise :class:`ApiError` unless ``r`` has an expected status (its body is read)."""
    if r.status_code in expected:
        return
    try:
        detail = r.json().get("detail", r.text)
    except (ValueError, AttributeError):
        detail = r.text
    if not isinstance(detail, str):
        detail = json.dumps(detail)  # FastAPI's own 422 lists the invalid values
    retry = None
    if r.status_code in (429, 503):
        retry = retry_after_seconds(r.headers.get("Retry-After"))
    raise ApiError(r.status_code, detail, retry)


def health_of(r: httpx.Response) -> Health:
    """The service's health report: 200 or its 503 (any other answer: :class:`ApiError`)."""
    if r.status_code == 503:
        with contextlib.suppress(ValueError):  # else a proxy's 503, not the service's report
            return Health.model_validate(r.json())
    check(r)
    return Health.model_validate(r.json())


def raise_for_outcome(job: Job) -> None:
    """:class:`ApiError` for a job that failed (its status and detail) or was cancelled."""
    if job.status == "failed":
        raise ApiError(job.status_code or 500, job.detail or "the job failed")
    if job.status == "cancelled":
        raise ApiError(404, f"job {job.id} was cancelled")


@dataclass
class ServerEvent:
    """One server-sent event."""

    id: str | None
    name: str
    data: str


class EventParser:
    """Server-sent events from the lines of a ``text/event-stream`` body, one at a time."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self._id: str | None = None
        self._name = "message"
        self._data: list[str] = []

    def feed(self, line: str) -> ServerEvent | None:
        """Take one line; return the event it completes, if any."""
        if not line:
            event = self.flush()
            self._reset()
            return event
        if line.startswith(":"):
            return None  # a comment (keep-alive)
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            self._id = value
        elif field == "event":
            self._name = value
        elif field == "data":
            self._data.append(value)
        return None

    def flush(self) -> ServerEvent | None:
        """The event the body ended in the middle of, if any."""
        if not self._data:
            return None
        return ServerEvent(self._id, self._name, "\n".join(self._data))


def job_of(event: ServerEvent) -> Job:
    """The job state an event carries; an ``error`` event (the store failed) is a 503."""
    if event.name == "error":
        try:
            detail = json.loads(event.data).get("detail", event.data)
        except (ValueError, AttributeError):
            detail = event.data
        raise ApiError(503, str(detail))
    return Job.model_validate_json(event.data)


DROPPED = (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError)
"""Errors of a connection that dropped mid-stream: an event stream resumes after them."""


def _flag(value: bool) -> str:
    return "true" if value else "false"
