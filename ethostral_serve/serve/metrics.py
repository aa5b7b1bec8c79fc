"""The service's Prometheus metrics, recorded through Ray Serve's metrics API.

:class:`RayMetrics` implements :class:`ethostral_serve.metrics.Metrics` with
``ray.serve.metrics`` counters, gauges and histograms. Ray adds the ``ray_`` prefix (and
``_total`` to counters) and the tags ``deployment``, ``replica`` and ``application``,
and every node's metrics agent serves them at ``http://NODE:METRICS_EXPORT_PORT/metrics``
(README "Metrics"). Ray sends a replica's records to that agent every few seconds.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Literal

from ray.serve import metrics as serve_metrics

from ethostral_serve.metrics import Kind, Outcome

log = logging.getLogger("ray.serve")

PREFIX = "ethostral_"
# Seconds a pipeline stage takes: from a few ms (VAD of a short clip) to minutes (ASR of
# an hour on CPU).
STAGE_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0, 300.0, 600.0
)  # fmt: skip
# Seconds from a stream's audio arriving to its partial or final event going out.
STREAM_LATENCY_BUCKETS_S = (
    0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 60.0
)  # fmt: skip
# Items in one batch of a batched model method (sizes are whole numbers: bucket le=4
# holds batches of 3 and 4).
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class RayMetrics:
    """Records into Ray Serve metrics (create it inside a replica, so Ray tags the
    records with the deployment and replica). Recording never raises."""

    def __init__(self) -> None:
        self._requests = serve_metrics.Counter(
            PREFIX + "requests",
            description="Uploads (POST /transcribe), live streams and jobs that ended, "
            "by kind, outcome (ok, client_error, server_error, cancelled) and status "
            "(HTTP status, WebSocket close code, or the job's result status)",
            tag_keys=("kind", "outcome", "status"),
        )
        self._audio = serve_metrics.Counter(
            PREFIX + "audio_seconds",
            description="Seconds of audio processed into stored sessions, by kind",
            tag_keys=("kind",),
        )
        self._stage = serve_metrics.Histogram(
            PREFIX + "stage_seconds",
            description="Seconds each pipeline stage of an upload or job took, as the "
            "ingress saw it (model calls to other deployments included)",
            boundaries=list(STAGE_BUCKETS_S),
            tag_keys=("stage",),
        )
        self._stream_latency = serve_metrics.Histogram(
            PREFIX + "stream_latency_seconds",
            description="Seconds from a live stream's audio arriving to its partial or "
            "final event being sent, by event",
            boundaries=list(STREAM_LATENCY_BUCKETS_S),
            tag_keys=("event",),
        )
        self._active_streams = serve_metrics.Gauge(
            PREFIX + "active_streams",
            description="Live streams this ingress replica serves now",
        )
        self._batch = serve_metrics.Histogram(
            PREFIX + "batch_size",
            description="Items per batch formed by a batched model method (asr: windows, "
            "emotion: segments, draft: live drafts, vad_stream: live VAD steps)",
            boundaries=[float(b) for b in BATCH_SIZE_BUCKETS],
            tag_keys=("method",),
        )
        self._redis_errors = serve_metrics.Counter(
            PREFIX + "redis_errors",
            description="Redis calls that failed (answered 503), by store and error type",
            tag_keys=("store", "error"),
        )
        self._failed: set[str] = set()

    def request(self, kind: Kind, outcome: Outcome, status: int) -> None:
        """Count an ended upload, stream or job."""
        tags = {"kind": kind, "outcome": outcome, "status": str(status)}
        self._safely("requests", self._requests.inc, 1.0, tags)

    def audio(self, kind: Kind, seconds: float) -> None:
        """Add processed audio seconds."""
        if seconds > 0:
            self._safely("audio_seconds", self._audio.inc, float(seconds), {"kind": kind})

    def stage(self, stage: str, seconds: float) -> None:
        """Observe a stage's seconds (a :data:`~ethostral_serve.pipeline.timing.StageObserver`)."""
        self._safely("stage_seconds", self._stage.observe, float(seconds), {"stage": stage})

    def stream_latency(self, event: Literal["partial", "final"], seconds: float) -> None:
        """Observe a live event's latency."""
        tags = {"event": event}
        self._safely("stream_latency", self._stream_latency.observe, float(seconds), tags)

    def active_streams(self, count: int) -> None:
        """Set the number of live streams."""
        self._safely("active_streams", self._active_streams.set, float(count), None)

    def batch(self, method: str, size: int) -> None:
        """Observe a batch's size."""
        self._safely("batch_size", self._batch.observe, float(size), {"method": method})

    def redis_error(self, store: str, error: str) -> None:
        """Count a failed Redis call."""
        self._safely("redis_errors", self._redis_errors.inc, 1.0, {"store": store, "error": error})

    def _safely(
        self, name: str, record: Callable[..., Any], value: float, tags: dict[str, str] | None
    ) -> None:
        try:
            record(value, tags=tags)
        except Exception:  # a metric must never fail a request; say so once per metric
            if name not in self._failed:
                self._failed.add(name)
                log.warning("metric %s%s not recorded", PREFIX, name, exc_info=True)
