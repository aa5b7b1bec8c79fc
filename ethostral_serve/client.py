"""A Python client of a running service's REST API: uploads as jobs, progress, sessions.

It needs only httpx and pydantic (no torch, no Ray)::

    from ethostral_serve.client import Client

    with Client("http://127.0.0.1:8000", api_key="...") as client:
        session = client.transcribe("meeting.mp3", on_progress=lambda job: print(job.progress))
        print(session.segments[0].text)

Every error the service answers with becomes :class:`ApiError` (its status and
``detail``); a service that cannot be reached raises httpx's ``TransportError``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from ethostral_serve.schema import Job, Session

TERMINAL = ("done", "failed", "cancelled")
RECONNECTS = 5  # consecutive dropped connections an event stream survives


class ApiError(Exception):
    """An error response of the service."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class Client:
    """Blocking client of one service (``base_url``, e.g. ``http://127.0.0.1:8000``)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout_s: float = 60.0,
        http: httpx.Client | None = None,
    ) -> None:
        """``http``: an httpx client to send through instead of one of its own (tests
        pass FastAPI's ``TestClient``); it is not closed by :meth:`close`."""
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._own = http is None
        self._http = http or httpx.Client(
            base_url=base_url.rstrip("/"),
            timeout=timeout_s,  # job events send a keep-alive every 15 s
        )

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

    def submit(
        self,
        path: str | Path,
        *,
        language: str | None = None,
        diarize: bool = True,
        emotion: bool = True,
        adapter: str | None = None,
        num_speakers: int | None = None,
        min_speakers: int | None = None,
        max_speakers: int | None = None,
        callback_url: str | None = None,
    ) -> Job:
        """Upload a file as a job (``async=true``); returns it queued."""
        data: dict[str, Any] = {"async": "true", "diarize": _flag(diarize)}
        data["emotion"] = _flag(emotion)
        for name, value in (
            ("language", language),
            ("adapter", adapter),
            ("num_speakers", num_speakers),
            ("min_speakers", min_speakers),
            ("max_speakers", max_speakers),
            ("callback_url", callback_url),
        ):
            if value is not None:
                data[name] = str(value)
        path = Path(path)
        with path.open("rb") as f:
            r = self._http.post(
                "/transcribe", data=data, files={"file": (path.name, f)}, headers=self._headers
            )
        _raise_for(r, expected=(202,))
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
                        _raise_for(r)
                    for event_id, name, data in _sse(r.iter_lines()):
                        failures = 0
                        last_id = event_id or last_id
                        if name == "error":
                            raise ApiError(503, json.loads(data).get("detail", data))
                        job = Job.model_validate_json(data)
                        yield job
                        if job.status in TERMINAL:
                            return
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.ReadError):
                failures += 1  # a dropped connection: resume after the last event
                if failures > RECONNECTS:
                    raise

    def get(self, session_id: str) -> Session:
        """The stored session (:class:`ApiError` 202 while its job runs, or the failed
        job's status)."""
        r = self._http.get(f"/sessions/{session_id}", headers=self._headers)
        _raise_for(r)
        return Session.model_validate(r.json())

    def delete(self, session_id: str) -> None:
        """Delete a session, or cancel its job."""
        r = self._http.delete(f"/sessions/{session_id}", headers=self._headers)
        _raise_for(r, expected=(204,))

    def transcribe(
        self, path: str | Path, on_progress: Callable[[Job], None] | None = None, **options: Any
    ) -> Session:
        """Upload as a job, follow its progress, return the session (:class:`ApiError`
        when the job fails)."""
        job = self.submit(path, **options)
        for state in self.job_events(job.id):
            if on_progress is not None:
                on_progress(state)
            if state.status == "failed":
                raise ApiError(state.status_code or 500, state.detail or "the job failed")
            if state.status == "cancelled":
                raise ApiError(404, f"job {job.id} was cancelled")
        return self.get(job.id)


def _flag(value: bool) -> str:
    return "true" if value else "false"


def _raise_for(r: httpx.Response, expected: tuple[int, ...] = (200,)) -> None:
    if r.status_code in expected:
        return
    try:
        detail = r.json().get("detail", r.text)
    except (ValueError, AttributeError):
        detail = r.text
    if not isinstance(detail, str):
        detail = json.dumps(detail)
    raise ApiError(r.status_code, detail)


def _sse(lines: Iterator[str]) -> Iterator[tuple[str | None, str, str]]:
    """(id, event, data) of each server-sent event."""
    event_id: str | None = None
    name = "message"
    data: list[str] = []
    for line in lines:
        if not line:
            if data:
                yield event_id, name, "\n".join(data)
            event_id, name, data = None, "message", []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "id":
            event_id = value
        elif field == "event":
            name = value
        elif field == "data":
            data.append(value)
    if data:
        yield event_id, name, "\n".join(data)
