"""What the service counts and times, behind an interface that needs nothing installed.

:class:`Metrics` is what the API, the job worker and the Redis stores record into. Under
Ray Serve the deployments install :class:`~ethostral_serve.serve.metrics.RayMetrics`,
which exports them to Prometheus; everywhere else (the CLI, in-process tests) the
recorder is :class:`NoopMetrics` and recording costs nothing.

Code that is handed no recorder explicitly (the Redis stores, built in many places)
records into the process's one :func:`installed` recorder.
"""

from __future__ import annotations

from typing import Literal, Protocol

Kind = Literal["upload", "stream", "job"]
Outcome = Literal["ok", "client_error", "server_error", "cancelled"]

CANCELLED_STATUS = 499  # an upload whose client left, a cancelled job (nginx's "client closed")
STREAM_GONE = 1001  # a stream whose client went away without "stop" (WebSocket "going away")


class Metrics(Protocol):
    """Records what the service did. Implementations must not raise."""

    def request(self, kind: Kind, outcome: Outcome, status: int) -> None:
        """An upload, stream or job ended with ``outcome``; ``status``: its HTTP status,
        WebSocket close code, or the status of the job's result."""
        ...

    def audio(self, kind: Kind, seconds: float) -> None:
        """``seconds`` of audio were processed (a stored session's duration)."""
        ...

    def stage(self, stage: str, seconds: float) -> None:
        """A pipeline stage (decode, vad, diarize, asr, segment, emotion, and
        encode_audio when the upload's audio is kept) took ``seconds``."""
        ...

    def stream_latency(self, event: Literal["partial", "final"], seconds: float) -> None:
        """A live stream's event went out ``seconds`` after the audio that made it due."""
        ...

    def active_streams(self, count: int) -> None:
        """This process now serves ``count`` live streams."""
        ...

    def batch(self, method: str, size: int) -> None:
        """A batched model method ran a batch of ``size`` items."""
        ...

    def redis_error(self, store: str, error: str) -> None:
        """A Redis call of ``store`` failed with an ``error`` of this type."""
        ...


class NoopMetrics:
    """Records nothing (outside Ray Serve)."""

    def request(self, kind: Kind, outcome: Outcome, status: int) -> None:
        """Record nothing."""

    def audio(self, kind: Kind, seconds: float) -> None:
        """Record nothing."""

    def stage(self, stage: str, seconds: float) -> None:
        """Record nothing."""

    def stream_latency(self, event: Literal["partial", "final"], seconds: float) -> None:
        """Record nothing."""

    def active_streams(self, count: int) -> None:
        """Record nothing."""

    def batch(self, method: str, size: int) -> None:
        """Record nothing."""

    def redis_error(self, store: str, error: str) -> None:
        """Record nothing."""


NOOP = NoopMetrics()
_installed: Metrics = NOOP


def install(recorder: Metrics) -> None:
    """Make ``recorder`` the process's recorder (a Serve replica, at start)."""
    global _installed
    _installed = recorder


def installed() -> Metrics:
    """The process's recorder: :data:`NOOP` unless one was installed."""
    return _installed


def http_outcome(status: int) -> Outcome:
    """The outcome of a request that ended with this HTTP status."""
    if status == CANCELLED_STATUS:
        return "cancelled"
    if status >= 500:
        return "server_error"
    if status >= 400:
        return "client_error"
    return "ok"


# Close codes of a stream that failed on the server's side: internal error, try again
# later (store or model down, server full).
_SERVER_CLOSE_CODES = frozenset({1011, 1013})


def stream_outcome(code: int) -> Outcome:
    """The outcome of a stream the server closed with WebSocket close ``code``."""
    if code == 1000:
        return "ok"
    if code == STREAM_GONE:
        return "cancelled"
    if code in _SERVER_CLOSE_CODES:
        return "server_error"
    return "client_error"
