"""The benchmarks' client for ``WS /transcribe/stream``: sends numpy audio at real-time
pace and yields raw events with timings.

Used by ``benchmarks/stream_latency.py`` and the other stream benchmarks. Each event
comes with the seconds since the stream began when it arrived, and the client keeps when
it sent each chunk, so latency can be measured from the chunk that carried an event's
``end_ms``. Applications use :meth:`ethostral_serve.client.AsyncClient.stream` (typed
events, close codes as exceptions) instead.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import urlencode

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE


@dataclass
class StreamRun:
    """Send times of a stream's chunks, to turn event times into latencies."""

    chunk_ms: int
    sent_at: list[float] = field(default_factory=list)  # seconds since start, per chunk

    def latency(self, end_ms: int, received_at: float) -> float | None:
        """Seconds from sending the chunk that carried ``end_ms`` to ``received_at``."""
        index = max(0, (end_ms - 1) // self.chunk_ms)
        if index >= len(self.sent_at):
            index = len(self.sent_at) - 1  # the final flush after the last chunk
        if index < 0:
            return None
        return received_at - self.sent_at[index]


def stream_audio(
    url: str,
    samples: np.ndarray,
    params: dict[str, object] | None = None,
    chunk_ms: int = 100,
    speed: float = 1.0,
    api_key: str | None = None,
) -> Iterator[tuple[dict[str, object], float, StreamRun]]:
    """Stream 16 kHz mono ``samples`` as PCM16 chunks; yield ``(event, received_at, run)``.

    ``url`` is the service's base (``http://host:port`` or ``ws://host:port``);
    ``speed`` > 1 sends faster than real time; ``api_key`` goes in an ``Authorization:
    Bearer`` header. Ends after the ``session`` or ``error``
    event (or when the server closes).
    """
    from websockets.sync.client import connect

    base = url.rstrip("/").replace("http://", "ws://", 1).replace("https://", "wss://", 1)
    query = urlencode(
        {k: str(v).lower() if isinstance(v, bool) else v for k, v in (params or {}).items()}
    )
    target = f"{base}/transcribe/stream" + (f"?{query}" if query else "")
    pcm = (np.clip(samples, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    step = 2 * SAMPLE_RATE * chunk_ms // 1000
    run = StreamRun(chunk_ms)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else None
    with connect(target, max_size=None, additional_headers=headers) as ws:
        t0 = time.perf_counter()

        def send() -> None:
            for n, i in enumerate(range(0, len(pcm), step)):
                due = t0 + n * chunk_ms / 1000 / speed
                time.sleep(max(0.0, due - time.perf_counter()))
                run.sent_at.append(time.perf_counter() - t0)
                try:
                    ws.send(pcm[i : i + step])
                except Exception:  # the server closed the stream (it says why)
                    return
            try:
                ws.send(json.dumps({"type": "stop"}))
            except Exception:
                return

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        try:
            for message in ws:
                event = json.loads(message)
                yield event, time.perf_counter() - t0, run
                if event.get("type") in ("session", "error"):
                    break
        finally:
            sender.join(timeout=5)
