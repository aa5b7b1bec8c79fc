"""Live-stream latency against a running service (``serve run serve_config.yaml``).

    .venv/bin/python -m benchmarks.stream_latency [--url http://127.0.0.1:8000]
        [--streams 1 2 4] [--seconds 87] [--speakers 3080 533] [--upload FILE]
        [--sessions-out DIR]

Builds the same two-speaker conversation as ``benchmarks.serve_upload`` and sends it
at real-time pace in 100 ms PCM16 chunks, from N clients at once. Latency of an event
is measured from the sending of the chunk that carries its ``end_ms`` to its arrival.
Prints, per number of concurrent streams: partials and finals received, partial and
final latency p50/p95 (a final's latency is its lag behind the speech it closes), the
stored sessions' WER (mean and worst), and for the first stream the speakers and speaker
agreement. Bare faster-whisper's speed on the same audio is measured in the same run,
before and after the streams, so a slower or busier machine shows as such. With
``--upload FILE`` the streams run under mixed load: the file is uploaded to
``POST /transcribe`` again and again, one upload at a time, until the streams end, and
the uploads' times are reported too.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import tempfile
import threading
import time
import wave
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import (
    bare_whisper_s,
    machine,
    print_table,
    speaker_agreement,
    wer_counts,
)
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


def upload_until(url: str, path: Path, stop: threading.Event) -> list[tuple[float, int]]:
    """Upload ``path`` back to back until ``stop`` is set: (seconds, status) of each."""
    import httpx

    data = path.read_bytes()
    done: list[tuple[float, int]] = []
    while not stop.is_set():
        t0 = time.perf_counter()
        r = httpx.post(
            f"{url}/transcribe",
            files={"file": (path.name, data)},
            data={"language": "en"},
            timeout=600,
        )
        done.append((time.perf_counter() - t0, r.status_code))
    return done


def bare_speed(samples: np.ndarray) -> str:
    """Bare faster-whisper on ``samples`` in a fresh process: seconds and real-time factor."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "conversation.wav"
        with wave.open(str(path), "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(16000)
            pcm = np.clip(samples, -1.0, 1.0) * 32767
            out.writeframes(pcm.astype("<i2").tobytes())
        seconds, detail = bare_whisper_s(path)
    return f"{seconds:.1f} s wall, RTF {seconds / (len(samples) / 16000):.3f} ({detail})"


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--streams", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=87.0)
    parser.add_argument("--speakers", nargs="+", default=["3080", "533"])
    parser.add_argument("--upload", type=Path, help="upload this file again and again meanwhile")
    parser.add_argument(
        "--sessions-out", type=Path, help="write each stored session here as JSON, with its WER"
    )
    args = parser.parse_args()
    samples, reference, turns = conversation(args.speakers, args.seconds)
    print(f"machine: {machine()}; service: {args.url}")
    print(f"audio: {len(samples) / 16000:.1f} s, sent at real time in 100 ms chunks")
    print(f"bare faster-whisper base int8 beam 5 on it, before: {bare_speed(samples)}\n")
    rows = []
    quality = []
    uploads: list[list[object]] = []
    for n in args.streams:
        stop = threading.Event()
        with cf.ThreadPoolExecutor(n + 1) as pool:
            uploading = (
                pool.submit(upload_until, args.url, args.upload, stop) if args.upload else None
            )
            results = list(pool.map(lambda _: one_stream(args.url, samples), range(n)))
            stop.set()
            if uploading is not None:
                done = uploading.result()
                seconds = [t for t, _ in done]
                statuses = sorted({status for _, status in done})
                uploads.append(
                    [n, len(done), f"{np.median(seconds):.1f}", f"{max(seconds):.1f}", statuses]
                )
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
        sessions = [r["session"] for r in results if r["session"] is not None]
        wers = [
            wer_counts([reference], [" ".join(seg["text"] for seg in x["segments"])])[0]
            for x in sessions
        ]
        if args.sessions_out is not None:
            args.sessions_out.mkdir(parents=True, exist_ok=True)
            for i, (x, w) in enumerate(zip(sessions, wers, strict=True)):
                path = args.sessions_out / f"streams{n}-{i}-wer{100 * w:.1f}.json"
                path.write_text(json.dumps(x, indent=1), encoding="utf-8")
        first = results[0]["session"]
        quality.append(
            [
                n,
                len({seg["speaker"] for seg in first["segments"]}) if first else "-",
                f"{100 * speaker_agreement(first['segments'], turns):.1f}" if first else "-",
                f"{100 * np.mean(wers):.1f}" if wers else "-",
                f"{100 * max(wers):.1f}" if wers else "-",
            ]
        )
    headers = ["streams", "stored", "partials/stream", "finals/stream"]
    headers += ["partial p50 ms", "partial p95 ms", "final lag p50 ms", "final lag p95 ms"]
    print_table(headers, rows)
    print()
    quality_headers = ["streams", "speakers (stream 1)", "speaker agreement % (stream 1)"]
    print_table([*quality_headers, "WER % (mean)", "WER % (worst)"], quality)
    if uploads:
        print(
            f"\nuploads of {args.upload.name} meanwhile, one at a time "
            "(the last one ends after the streams)"
        )
        print_table(
            ["streams", "uploads", "upload s (median)", "upload s (max)", "status"], uploads
        )
    print(f"\nbare faster-whisper on the same audio, after: {bare_speed(samples)}")


if __name__ == "__main__":
    main()
