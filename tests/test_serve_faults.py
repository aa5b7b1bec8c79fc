"""The Serve graph with API keys and the embedded Redis, on a real local Ray: keys through
the proxy, and faults (a model replica killed mid-upload, the embedded Redis killed)."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from redis_server import free_port
from speech import meeting_minute, two_speaker_conversation

from benchmarks.processes import cpu_seconds, redis_pids, replica_pids
from benchmarks.serve_upload import wav_bytes
from ethostral_serve.cli import main as cli

pytestmark = pytest.mark.slow

APP = "ethostral-faults"


class Graph:
    """The running app: its URL and where its embedded Redis keeps its data."""

    def __init__(self, url: str, redis_dir: Path) -> None:
        from ethostral_serve.embedded_redis import EmbeddedRedis

        self.url = url
        self.redis_dir = redis_dir
        self.redis_url = EmbeddedRedis(redis_dir).url

    def key(self, name: str, capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
        """A key made with the real CLI, as an operator would; the headers that send it."""
        capsys.readouterr()
        assert cli(["keys", "--redis-url", self.redis_url, "create", "--name", name]) == 0
        secret = capsys.readouterr().out.strip()
        assert secret.startswith("eth_")
        return {"Authorization": f"Bearer {secret}"}


@pytest.fixture(scope="module")
def graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Graph]:
    """The default graph with ``auth.required`` and the embedded Redis (no redis.url)."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from ethostral_serve.serve.app import AppArgs, build_app

    redis_dir = tmp_path_factory.mktemp("faults") / "redis"
    settings = {"redis": {"url": None, "data_dir": str(redis_dir)}, "auth": {"required": True}}
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(build_app(AppArgs(settings=settings)), name=APP, route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        _until(lambda: _status(f"{url}/healthz") == 200, 180, "the app never became healthy")
        yield Graph(url, redis_dir)
    finally:
        serve.shutdown()
        ray.shutdown()
    # The Ingress stopped the embedded Redis it started (the watchdog first).
    assert not redis_pids(redis_dir)


def _status(url: str, **kwargs: object) -> int | None:
    try:
        return httpx.get(url, timeout=10, **kwargs).status_code  # type: ignore[arg-type]
    except httpx.HTTPError:
        return None


def _until(condition: Callable[[], bool], timeout_s: float, what: str) -> None:
    """Wait for a state the system reaches by itself (a replica replaced, a server back)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout_s:g} s")
        time.sleep(0.5)


def _replica_pid(deployment: str) -> int:
    """The process of the deployment's one replica."""
    pids = replica_pids(deployment, APP)
    assert len(pids) == 1, pids
    return pids[0]


def _upload(
    graph: Graph, samples: np.ndarray, headers: dict[str, str], timeout: float = 300
) -> httpx.Response:
    files = {"file": ("talk.wav", wav_bytes(samples), "audio/wav")}
    data = {"language": "en", "emotion": "false"}
    return httpx.post(
        f"{graph.url}/transcribe", files=files, data=data, headers=headers, timeout=timeout
    )


def _stream(graph: Graph, samples: np.ndarray, **connect: object) -> tuple[list[dict], int]:
    """Events of a stream at 3x real time, and the code the server closed with."""
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect as ws_connect

    url = f"ws://{graph.url.removeprefix('http://')}/transcribe/stream?language=en&emotion=false"
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    events: list[dict] = []
    with ws_connect(url, **connect) as ws:  # type: ignore[arg-type]
        try:
            for i in range(0, len(pcm), 3200):
                ws.send(pcm[i : i + 3200])
                time.sleep(0.03)
            ws.send(json.dumps({"type": "stop"}))
        except ConnectionClosed:
            pass  # the server closed first: read what it said
        try:
            for message in ws:
                events.append(json.loads(message))
        except ConnectionClosed:
            pass
        assert ws.close_code is not None
        return events, ws.close_code


def test_keys_and_owners_through_the_proxy(graph: Graph, capsys) -> None:
    r = httpx.get(f"{graph.url}/sessions", timeout=10)
    assert r.status_code == 401 and "ethostral keys create" in r.json()["detail"]
    assert r.headers["www-authenticate"].startswith("Bearer")
    alice, bob = graph.key("alice", capsys), graph.key("bob", capsys)
    talk = two_speaker_conversation(turns_each=1)
    r = _upload(graph, talk.samples, alice)
    assert r.status_code == 200, r.text
    session_id = r.json()["id"]
    assert httpx.get(f"{graph.url}/sessions/{session_id}", headers=bob).status_code == 404
    assert httpx.get(f"{graph.url}/sessions/{session_id}", headers=alice).status_code == 200
    listed = httpx.get(f"{graph.url}/sessions", headers=alice).json()["sessions"]
    assert [s["id"] for s in listed] == [session_id]
    assert httpx.get(f"{graph.url}/sessions", headers=bob).json()["sessions"] == []

    # Through Serve's proxy, a browser's subprotocol form works, and a missing key
    # closes the socket with 4401.
    secret = alice["Authorization"].split()[1]
    events, code = _stream(graph, talk.samples, subprotocols=["token", secret])
    assert code == 1000 and events[-1]["type"] == "session", events[-1:]
    stream_id = events[-1]["session_id"]
    assert httpx.get(f"{graph.url}/sessions/{stream_id}", headers=alice).status_code == 200
    assert httpx.get(f"{graph.url}/sessions/{stream_id}", headers=bob).status_code == 404
    events, code = _stream(graph, talk.samples[:16000])
    assert code == 4401 and "API key" in events[-1]["detail"]


def test_a_killed_embedded_redis_comes_back_with_its_data(graph: Graph, capsys) -> None:
    headers = graph.key("redis-crash", capsys)
    talk = two_speaker_conversation(turns_each=1)
    r = _upload(graph, talk.samples, headers)
    assert r.status_code == 200, r.text
    before = r.json()
    (pid,) = redis_pids(graph.redis_dir)
    os.kill(pid, signal.SIGKILL)
    killed = time.monotonic()
    _until(lambda: redis_pids(graph.redis_dir) not in ([], [pid]), 30, "Redis not restarted")
    _until(lambda: _status(f"{graph.url}/healthz") == 200, 30, "not healthy again")
    again = _upload(graph, talk.samples, headers)  # the key survived too
    assert again.status_code == 200, again.text
    assert time.monotonic() - killed < 30 + 120  # restarted within 30 s, then one upload
    stored = httpx.get(f"{graph.url}/sessions/{before['id']}", headers=headers, timeout=10)
    assert stored.json() == before


def test_a_model_replica_killed_mid_upload_gives_503_then_recovers(graph: Graph, capsys) -> None:
    headers = graph.key("replica-crash", capsys)
    samples, _ = meeting_minute()
    long_audio = np.concatenate([samples, samples])  # two minutes: ASR runs a while
    pid = _replica_pid("EthostralModel")
    idle = cpu_seconds(pid)
    with cf.ThreadPoolExecutor(1) as pool:
        upload = pool.submit(_upload, graph, long_audio, headers)
        # The model replica is busy with this upload once it has used a second of CPU.
        _until(lambda: cpu_seconds(pid) > idle + 1.0 or upload.done(), 120, "the model never ran")
        assert not upload.done()
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        r = upload.result()
        answered_s = time.monotonic() - killed
    assert r.status_code == 503, r.text
    assert int(r.headers["retry-after"]) >= 1
    assert "EthostralModel" in r.json()["detail"]
    assert answered_s < 10
    # Serve replaces the replica; meanwhile /healthz answers (503 or 200), never hangs.
    _until(lambda: replica_pids("EthostralModel", APP) not in ([], [pid]), 60, "no new one")
    _until(lambda: _status(f"{graph.url}/healthz") == 200, 120, "not healthy again")
    talk = two_speaker_conversation(turns_each=1)
    assert _upload(graph, talk.samples, headers).status_code == 200
