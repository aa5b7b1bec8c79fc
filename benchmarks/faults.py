"""Fault runs against a running service on this machine (``serve run serve_config.yaml``).

    .venv/bin/python -m benchmarks.faults [--url http://127.0.0.1:8000] [--api-key KEY]
        [--redis-dir ~/.cache/ethostral/redis] [--only replica redis stream]

- ``replica``: an upload of two minutes of speech; once the EthostralModel replica has
  spent a second of CPU on it, the replica is killed (SIGKILL). Measures how long the
  client waits for its answer (503 expected), then how long until an upload is
  answered 200 again, and what ``/healthz`` said meanwhile.
- ``redis``: an upload is stored, the embedded ``redis-server`` is killed (SIGKILL).
  Measures how long until ``/healthz`` and an upload succeed again, and checks that
  the earlier session reads back unchanged.
- ``stream``: a real-time stream; after its first final the EthostralModel replica is
  killed. Reports the close code, the error event and whether the finalised segments
  were stored (an in-flight call fails: 1013; a call sent after the kill waits for the
  new replica instead, so the stream may also end normally).

Prints one table; a figure is only what this run measured.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import machine, print_table
from benchmarks.processes import cpu_seconds, redis_pids, replica_pids
from benchmarks.serve_upload import conversation, wav_bytes

SAMPLE_RATE = 16_000


class Service:
    """The running service, and uploads to it."""

    def __init__(self, url: str, api_key: str | None) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def upload(self, samples: np.ndarray, timeout: float = 600) -> httpx.Response:
        files = {"file": ("fault.wav", wav_bytes(samples), "audio/wav")}
        data = {"language": "en", "emotion": "false"}
        return httpx.post(
            f"{self.url}/transcribe", files=files, data=data, headers=self.headers, timeout=timeout
        )

    def health(self) -> int | None:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=10).status_code
        except httpx.HTTPError:
            return None


def wait_for(condition: Callable[[], bool], timeout_s: float) -> float | None:
    """Seconds until ``condition`` holds (polled every 0.5 s); None on timeout."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if condition():
            return time.monotonic() - t0
        time.sleep(0.5)
    return None


def the_replica(deployment: str) -> int:
    pids = replica_pids(deployment)
    if len(pids) != 1:
        raise SystemExit(f"expected one {deployment} replica on this machine, found {pids}")
    return pids[0]


def replica_fault(service: Service, short: np.ndarray, long: np.ndarray) -> list[list[object]]:
    pid = the_replica("EthostralModel")
    idle = cpu_seconds(pid)
    with cf.ThreadPoolExecutor(1) as pool:
        upload = pool.submit(service.upload, long)
        busy = wait_for(lambda: cpu_seconds(pid) > idle + 1.0 or upload.done(), 300)
        if busy is None or upload.done():
            return [["replica", "the upload ended before the model was busy", "", ""]]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        r = upload.result()
        answered = time.monotonic() - killed
    seen: set[object] = set()

    def ok_again() -> bool:
        seen.add(service.health())
        return service.upload(short, timeout=120).status_code == 200

    back = wait_for(ok_again, 300)
    return [
        [
            "replica",
            "killed mid-upload: the client's answer",
            f"{r.status_code}",
            f"{answered:.1f}",
        ],
        [
            "replica",
            f"Retry-After {r.headers.get('retry-after')}: {r.text[:60]}",
            "",
            "",
        ],
        [
            "replica",
            f"first 200 again (health seen meanwhile: {sorted(seen, key=str)})",
            "200" if back is not None else "none",
            f"{answered + back:.1f}" if back is not None else "> 300",
        ],
    ]


def redis_fault(service: Service, short: np.ndarray, redis_dir: Path) -> list[list[object]]:
    r = service.upload(short)
    if r.status_code != 200:
        return [["redis", f"the first upload failed: {r.status_code}", "", ""]]
    before = r.json()
    pids = redis_pids(redis_dir)
    if len(pids) != 1:
        return [["redis", f"expected one redis-server for {redis_dir}, found {pids}", "", ""]]
    os.kill(pids[0], signal.SIGKILL)
    killed = time.monotonic()
    healthy = wait_for(lambda: service.health() == 200, 60)
    upload_ok = wait_for(lambda: service.upload(short, timeout=120).status_code == 200, 120)
    stored = httpx.get(
        f"{service.url}/sessions/{before['id']}", headers=service.headers, timeout=10
    )
    new = redis_pids(redis_dir)
    return [
        ["redis", f"killed (pid {pids[0]}); restarted as {new}", "", ""],
        ["redis", "/healthz 200 again", "200", f"{healthy:.1f}" if healthy is not None else "> 60"],
        [
            "redis",
            "an upload answered 200 again",
            "200",
            f"{time.monotonic() - killed:.1f}" if upload_ok is not None else "> 180",
        ],
        ["redis", "the earlier session, read back", stored.status_code, stored.json() == before],
    ]


def stream_fault(service: Service, samples: np.ndarray) -> list[list[object]]:
    from ethostral_serve.stream_client import stream_audio

    pid = the_replica("EthostralModel")
    killed = threading.Event()
    events: list[dict[str, object]] = []
    for event, _, _ in stream_audio(
        service.url, samples, {"language": "en", "emotion": False}, api_key=service.api_key
    ):
        events.append(event)
        if event["type"] == "final" and not killed.is_set():
            os.kill(pid, signal.SIGKILL)
            killed.set()
    last = events[-1] if events else {}
    finals = [e for e in events if e["type"] == "final" and e.get("text")]
    session_id = last.get("session_id")
    kept = "-"
    if session_id:
        stored = httpx.get(
            f"{service.url}/sessions/{session_id}", headers=service.headers, timeout=10
        ).json()
        ids = {s["id"] for s in stored["segments"]}
        kept = f"{sum(f['segment_id'] in ids for f in finals)} of {len(finals)} finals stored"
    wait_for(lambda: service.health() == 200, 300)
    return [
        ["stream", f"killed after the first final: {json.dumps(last)[:90]}", "", ""],
        ["stream", kept, "", ""],
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--redis-dir", type=Path, default=None, help="the embedded Redis's data")
    ap.add_argument("--only", nargs="*", default=["replica", "redis", "stream"])
    args = ap.parse_args()
    from ethostral_serve.settings import Settings

    settings = Settings()
    redis_dir = args.redis_dir or settings.redis.data_dir or settings.cache_dir / "redis"
    service = Service(args.url, args.api_key)
    if service.health() != 200:
        raise SystemExit(f"{args.url}/healthz is not 200: start the service first")
    short, _, _ = conversation(["3080", "533"], 20, seed=3)
    long, _, _ = conversation(["533", "3080"], 120, seed=4)
    rows: list[list[object]] = []
    if "replica" in args.only:
        rows += replica_fault(service, short, long)
    if "redis" in args.only:
        rows += redis_fault(service, short, redis_dir.expanduser().resolve())
    if "stream" in args.only:
        rows += stream_fault(service, long[: 60 * SAMPLE_RATE])
    print(f"machine: {machine()}; service {args.url}\n")
    print_table(["fault", "what", "status", "seconds"], rows)


if __name__ == "__main__":
    main()
