"""A Python client of a running service: uploads, jobs with progress, stored sessions,
subtitles, stored audio, health, and live streams. Blocking (:class:`Client`) or asyncio
(:class:`AsyncClient`), with the same methods; results are the service's own pydantic
models (:mod:`ethostral_serve.schema`).

It needs only httpx, pydantic and (for live streams) websockets; no torch, no Ray::

    from ethostral_serve.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        session = client.transcribe("meeting.mp3", on_progress=lambda job: print(job.progress))
        print(session.segments[0].text)
        for event in client.stream("talk.wav", language="en"):
            print(event.type, getattr(event, "text", ""))

Every error the service answers with becomes :class:`ApiError` (its status, ``detail``
and ``Retry-After``); a live stream that closes without its session raises
:class:`StreamError` (close code, reason, detail).
"""

from ethostral_serve.client.asynchronous import AsyncClient
from ethostral_serve.client.blocking import Client
from ethostral_serve.client.live import CLOSE_MEANINGS, AudioInput, StreamError
from ethostral_serve.client.protocol import TERMINAL, ApiError, Upload
from ethostral_serve.schema import (
    ErrorEvent,
    FinalEvent,
    Health,
    Job,
    PartialEvent,
    Session,
    SessionEvent,
    SessionList,
    SessionSummary,
    StreamEvent,
)

__all__ = [
    "CLOSE_MEANINGS",
    "TERMINAL",
    "ApiError",
    "AsyncClient",
    "AudioInput",
    "Client",
    "ErrorEvent",
    "FinalEvent",
    "Health",
    "Job",
    "PartialEvent",
    "Session",
    "SessionEvent",
    "SessionList",
    "SessionSummary",
    "StreamError",
    "StreamEvent",
    "Upload",
]
