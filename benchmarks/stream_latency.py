"""Live-stream latency against a running service (``serve run serve_config.yaml``).

    .venv/bin/python -m benchmarks.stream_latency [--url http://127.0.0.1:8000]
        [--streams 1 2 4] [--seconds 87] [--speakers 3080 533]

Builds the same two-speaker conversation as ``benchmarks.serve_upload`` and sends it
at real-time pace in 100 ms PCM16 chunks, from N clients at once. Latency of an event
is measured from the sending of the chunk that carries its ``end_ms`` to its arrival.
Prints, per number of concurrent streams: partials and finals received, partial and
final latency p50/p95, and for the first stream the stored session's speakers, speaker
agreement and WER.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
from typing import Any

import numpy as np

from benchmarks.common import machine, print_table, speaker_agreement, wer_counts
from benchmarks.serve_upload import conversation


def one_stream(url: str, samples: np.ndarray) -> dict[str, Any]:
    """Stream once; latencies by event type, and the stored session."""
    import httpx

    from ethostral_serve.stream_client import stream_audio

    partial: list[float] = []
    final: list[float] = []
    last: dict[str, Any] = {}
    for event, received_at, run in stream_audio(url, samples, {"language": "en"}):
        last = event
        if event["type"] in ("partial", "final"):
            lat = run.latency(int(event["end_ms"]), received_at)
            if lat is not None:
                (partial if event["type"] == "partial" else final).append(lat)
    session = None
    if last.get("type") == "session":
        session = httpx.get(f"{url}/sessions/{last['session_id']}", timeout=30).json()
    return {"partial": partial, "final": final, "session": session, "last": last}


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=87.0)
    parser.add_argument("--speakers", nargs="+", default=["3080", "533"])
    args = parser.parse_args()
    samples, reference, turns = conversation(args.speakers, args.seconds)
    print(f"machine: {machine()}; service: {args.url}")
    print(f"audio: {len(samples) / 16000:.1f} s, sent at real time in 100 ms chunks\n")
    rows = []
    quality = []
    for n in args.streams:
        with cf.ThreadPoolExecutor(n) as pool:
            results = list(pool.map(lambda _: one_stream(args.url, samples), range(n)))
        partial = np.concatenate([r["partial"] for r in results]) * 1000
        final = np.concatenate([r["final"] for r in results]) * 1000
        ended = sum(1 for r in results if r["last"].get("type") == "session")
        rows.append(
            [
                n,
                f"{ended}/{n}",
                f"{len(partial) / n:.0f}",
                f"{len(final) / n:.0f}",
                f"{np.percentile(partial, 50):.0f}" if len(partial) else "-",
                f"{np.percentile(partial, 95):.0f}" if len(partial) else "-",
                f"{np.percentile(final, 50):.0f}" if len(final) else "-",
                f"{np.percentile(final, 95):.0f}" if len(final) else "-",
            ]
        )
        session = results[0]["session"]
        if session is not None:
            hyp = " ".join(s["text"] for s in session["segments"])
            wer, _ = wer_counts([reference], [hyp])
            quality.append(
                [
                    n,
                    len({s["speaker"] for s in session["segments"]}),
                    f"{100 * speaker_agreement(session['segments'], turns):.1f}",
                    f"{100 * wer:.1f}",
                ]
            )
    headers = ["streams", "stored", "partials/stream", "finals/stream"]
    headers += ["partial p50 ms", "partial p95 ms", "final p50 ms", "final p95 ms"]
    print_table(headers, rows)
    print()
    print_table(["streams", "speakers", "speaker agreement %", "WER %"], quality)


if __name__ == "__main__":
    main()
