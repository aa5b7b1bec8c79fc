"""Metrics: the stage-timer hook, the recorder interface, what the API, streams, jobs and
Redis stores record (in-process, real models and a real Redis), the Ray recorder's
mapping onto ``ray.serve.metrics``, the ports the deployment files fix, and the Grafana
dashboard. The Serve test that scrapes Ray's endpoint is in ``test_serve.py``."""

from __future__ import annotations

import asyncio
import contextvars
import json
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import yaml

from ethostral_serve import metrics
from ethostral_serve.api.request_metrics import UploadMetricsMiddleware
from ethostral_serve.metrics import NOOP, NoopMetrics, http_outcome, stream_outcome
from ethostral_serve.pipeline import timing
from ethostral_serve.pipeline.compose import StageTimes

REPO = Path(__file__).resolve().parents[1]
WAIT_S = 120.0  # generous bound on conditions that hold within a second when green


class Recorder:
    """A :class:`Metrics` that keeps every call (thread-safe: list appends)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    def request(self, kind: str, outcome: str, status: int) -> None:
        self.calls.append(("request", kind, outcome, status))

    def audio(self, kind: str, seconds: float) -> None:
        self.calls.append(("audio", kind, seconds))

    def stage(self, stage: str, seconds: float) -> None:
        self.calls.append(("stage", stage, seconds))

    def stream_latency(self, event: str, seconds: float) -> None:
        self.calls.append(("stream_latency", event, seconds))

    def active_streams(self, count: int) -> None:
        self.calls.append(("active_streams", count))

    def batch(self, method: str, size: int) -> None:
        self.calls.append(("batch", method, size))

    def redis_error(self, store: str, error: str) -> None:
        self.calls.append(("redis_error", store, error))

    def of(self, name: str) -> list[tuple[Any, ...]]:
        return [c[1:] for c in self.calls if c[0] == name]

    def wait_for(self, name: str, predicate: Any = bool) -> list[tuple[Any, ...]]:
        """The calls of ``name`` once ``predicate(calls)`` holds (bounded by WAIT_S)."""
        deadline = time.monotonic() + WAIT_S
        while not predicate(self.of(name)):
            assert time.monotonic() < deadline, f"{name}: {self.of(name)}"
            time.sleep(0.05)
        return self.of(name)


# --- the stage-timer hook (pure) -----------------------------------------------------


def test_observe_without_an_observer_does_nothing() -> None:
    assert timing.observe("asr", 1.0) is None


def test_observing_hears_stage_times_only_inside_the_block() -> None:
    heard: list[tuple[str, float]] = []
    with timing.observing(lambda stage, s: heard.append((stage, s))):
        timing.observe("vad", 0.5)
    timing.observe("asr", 2.0)
    assert heard == [("vad", 0.5)]


def test_observing_none_hides_an_outer_observer_and_restores_it() -> None:
    heard: list[str] = []
    with timing.observing(lambda stage, s: heard.append(stage)):
        with timing.observing(None):
            timing.observe("vad", 0.1)
        timing.observe("asr", 0.2)
    assert heard == ["asr"]


def test_a_copied_context_carries_the_observer_to_a_thread() -> None:
    heard: list[str] = []
    with timing.observing(lambda stage, s: heard.append(stage)):
        context = contextvars.copy_context()
    worker = threading.Thread(target=context.run, args=(timing.observe, "diarize", 0.3))
    worker.start()
    worker.join()
    plain = threading.Thread(target=timing.observe, args=("emotion", 0.3))  # no context
    plain.start()
    plain.join()
    assert heard == ["diarize"]


def test_an_observer_that_raises_is_logged_and_the_stage_still_ends(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(stage: str, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    times = StageTimes()
    with timing.observing(broken), times.stage("asr"):
        pass
    assert "asr" in times.seconds
    assert "stage observer failed on asr" in caplog.text


def test_stage_times_report_each_stage_to_the_observer_and_the_hook() -> None:
    heard: list[tuple[str, float]] = []
    hooked: list[str] = []
    times = StageTimes()
    with timing.observing(lambda stage, s: heard.append((stage, s))):
        with times.stage("vad", lambda stage, s: hooked.append(stage)):
            time.sleep(0.01)
        with pytest.raises(ValueError), times.stage("asr"):
            raise ValueError("a failed stage is timed too")
    assert [stage for stage, _ in heard] == ["vad", "asr"] and hooked == ["vad"]
    assert heard[0][1] == times.seconds["vad"] and heard[0][1] >= 0.01


def test_the_pipeline_package_does_not_import_ray() -> None:
    for path in (REPO / "ethostral_serve" / "pipeline").glob("*.py"):
        source = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(ray|fastapi|redis)\b", source, re.M), path


# --- the recorder interface -----------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "outcome"),
    [(200, "ok"), (202, "ok"), (401, "client_error"), (413, "client_error"), (415, "client_error"),
     (429, "client_error"), (499, "cancelled"), (500, "server_error"), (503, "server_error")],
)  # fmt: skip
def test_http_outcome(status: int, outcome: str) -> None:
    assert http_outcome(status) == outcome


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(1000, "ok"), (1001, "cancelled"), (1003, "client_error"), (1007, "client_error"),
     (1008, "client_error"), (1009, "client_error"), (4401, "client_error"),
     (4429, "client_error"), (1011, "server_error"), (1013, "server_error")],
)  # fmt: skip
def test_stream_outcome(code: int, outcome: str) -> None:
    assert stream_outcome(code) == outcome


def test_the_process_recorder_is_a_noop_until_one_is_installed() -> None:
    assert isinstance(metrics.installed(), NoopMetrics)
    NOOP.request("upload", "ok", 200)  # records nothing, raises nothing
    recorder = Recorder()
    metrics.install(recorder)
    try:
        metrics.installed().batch("asr", 3)
    finally:
        metrics.install(NOOP)
    assert recorder.calls == [("batch", "asr", 3)] and metrics.installed() is NOOP


@pytest.fixture
def installed() -> Iterator[Recorder]:
    recorder = Recorder()
    metrics.install(recorder)
    try:
        yield recorder
    finally:
        metrics.install(NOOP)


def test_a_redis_store_counts_each_failed_call_by_store_and_error(installed: Recorder) -> None:
    from redis_server import free_port

    from ethostral_serve.errors import StoreUnavailableError
    from ethostral_serve.sessions import SessionStore

    store = SessionStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)

    async def ping() -> None:
        try:
            await store.ping()
        finally:
            await store.aclose()

    with pytest.raises(StoreUnavailableError):
        asyncio.run(ping())
    assert installed.of("redis_error") == [("SessionStore", "ConnectionError")]


def test_a_working_redis_store_counts_no_error(installed: Recorder, redis_url: str) -> None:
    from ethostral_serve.sessions import SessionStore

    store = SessionStore(redis_url)

    async def ping() -> None:
        try:
            await store.ping()
        finally:
            await store.aclose()

    asyncio.run(ping())
    assert installed.of("redis_error") == []


# --- the upload middleware, alone -----------------------------------------------------


def _scope(path: str, method: str = "POST", root_path: str = "") -> dict[str, Any]:
    return {"type": "http", "method": method, "path": path, "root_path": root_path}


def _answer(status: int) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def _sink(message: Any) -> None:
    return None


async def _nothing() -> dict[str, Any]:
    return {"type": "http.disconnect"}


def _call(app: Any, scope: dict[str, Any]) -> None:
    asyncio.run(app(scope, _nothing, _sink))


@pytest.mark.parametrize("status", [200, 413, 415, 503])
def test_the_middleware_counts_uploads_by_their_status(status: int) -> None:
    recorder = Recorder()
    middleware = UploadMetricsMiddleware(_answer(status), recorder, ("/transcribe", "/v1/up"))
    _call(middleware, _scope("/transcribe"))
    _call(middleware, _scope("/v1/up/"))
    expected = ("upload", http_outcome(status), status)
    assert recorder.of("request") == [expected, expected]


def test_an_upload_queued_as_a_job_is_left_to_the_job_to_count() -> None:
    recorder = Recorder()
    middleware = UploadMetricsMiddleware(_answer(202), recorder, ("/transcribe",))
    _call(middleware, _scope("/transcribe"))
    assert recorder.calls == []


def test_the_middleware_ignores_other_paths_and_methods() -> None:
    recorder = Recorder()
    middleware = UploadMetricsMiddleware(_answer(200), recorder, ("/transcribe",))
    _call(middleware, _scope("/healthz", method="GET"))
    _call(middleware, _scope("/transcribe", method="GET"))
    _call(middleware, _scope("/sessions"))
    asyncio.run(middleware({"type": "websocket", "path": "/transcribe"}, _nothing, _sink))
    assert recorder.calls == []


def test_the_middleware_strips_the_root_path() -> None:
    recorder = Recorder()
    middleware = UploadMetricsMiddleware(_answer(200), recorder, ("/transcribe",))
    _call(middleware, _scope("/api/transcribe", root_path="/api"))
    assert recorder.of("request") == [("upload", "ok", 200)]


def test_an_escaping_exception_counts_as_a_server_error_and_propagates() -> None:
    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug")

    recorder = Recorder()
    with pytest.raises(RuntimeError):
        _call(UploadMetricsMiddleware(broken, recorder, ("/transcribe",)), _scope("/transcribe"))
    assert recorder.of("request") == [("upload", "server_error", 500)]


def test_a_client_that_leaves_counts_as_cancelled() -> None:
    async def abandoned(scope: Any, receive: Any, send: Any) -> None:
        raise asyncio.CancelledError

    recorder = Recorder()
    with pytest.raises(asyncio.CancelledError):
        _call(UploadMetricsMiddleware(abandoned, recorder, ("/transcribe",)), _scope("/transcribe"))
    assert recorder.of("request") == [("upload", "cancelled", 499)]


# --- the Ray recorder, over stand-ins for ray.serve.metrics -----------------------------


class FakeMetric:
    made: ClassVar[list[FakeMetric]] = []

    def __init__(self, name: str, description: str = "", **kw: Any) -> None:
        self.name, self.description, self.kw = name, description, kw
        self.records: list[tuple[float, dict[str, str] | None]] = []
        self.fail = False
        FakeMetric.made.append(self)

    def _record(self, value: float, tags: dict[str, str] | None = None) -> None:
        if self.fail:
            raise ValueError("tag not declared")
        self.records.append((value, tags))

    inc = observe = set = _record


@pytest.fixture
def ray_metrics(monkeypatch: pytest.MonkeyPatch) -> Any:
    from ethostral_serve.serve import metrics as serve_metrics_module

    FakeMetric.made = []
    fake = SimpleNamespace(Counter=FakeMetric, Gauge=FakeMetric, Histogram=FakeMetric)
    monkeypatch.setattr(serve_metrics_module, "serve_metrics", fake)
    recorder = serve_metrics_module.RayMetrics()
    return recorder, {m.name: m for m in FakeMetric.made}


def test_ray_metrics_are_prefixed_and_declare_the_tags_they_record(ray_metrics: Any) -> None:
    recorder, made = ray_metrics
    assert set(made) == {
        "ethostral_requests",
        "ethostral_audio_seconds",
        "ethostral_stage_seconds",
        "ethostral_stream_latency_seconds",
        "ethostral_active_streams",
        "ethostral_batch_size",
        "ethostral_redis_errors",
    }
    recorder.request("upload", "ok", 200)
    recorder.audio("stream", 12.5)
    recorder.audio("job", 0.0)  # nothing processed: nothing added
    recorder.stage("asr", 1.25)
    recorder.stream_latency("final", 0.4)
    recorder.active_streams(3)
    recorder.batch("emotion", 7)
    recorder.redis_error("JobStore", "TimeoutError")
    for metric in made.values():
        assert metric.description
        declared = set(metric.kw.get("tag_keys") or ())
        for _, tags in metric.records:
            assert set(tags or {}) == declared, metric.name
        bounds = metric.kw.get("boundaries")
        if bounds is not None:
            assert bounds == sorted(bounds) and bounds[0] > 0
    assert made["ethostral_requests"].records == [
        (1.0, {"kind": "upload", "outcome": "ok", "status": "200"})
    ]
    assert made["ethostral_audio_seconds"].records == [(12.5, {"kind": "stream"})]
    assert made["ethostral_stage_seconds"].records == [(1.25, {"stage": "asr"})]
    assert made["ethostral_stream_latency_seconds"].records == [(0.4, {"event": "final"})]
    assert made["ethostral_active_streams"].records == [(3.0, None)]
    assert made["ethostral_batch_size"].records == [(7.0, {"method": "emotion"})]
    assert made["ethostral_redis_errors"].records == [
        (1.0, {"store": "JobStore", "error": "TimeoutError"})
    ]


def test_a_failing_ray_metric_never_raises_and_is_logged_once(
    ray_metrics: Any, caplog: pytest.LogCaptureFixture
) -> None:
    recorder, made = ray_metrics
    made["ethostral_stage_seconds"].fail = True
    recorder.stage("vad", 0.1)
    recorder.stage("vad", 0.2)
    recorder.batch("asr", 2)  # the others still record
    assert caplog.text.count("metric ethostral_stage_seconds not recorded") == 1
    assert made["ethostral_batch_size"].records == [(2.0, {"method": "asr"})]


# --- in-process, real models and a real Redis ----------------------------------------------


@pytest.fixture(scope="module")
def talk() -> Any:
    from speech import two_speaker_conversation

    return two_speaker_conversation(turns_each=1)


def _app(engine: Any, store_url: str, recorder: Recorder, **kw: Any) -> Any:
    from fastapi.testclient import TestClient

    from ethostral_serve.api.app import create_app
    from ethostral_serve.runner import PipelineRunner
    from ethostral_serve.sessions import SessionStore

    settings = kw.pop("settings", engine.settings)
    runner = PipelineRunner.traced(
        settings, engine.vad, engine.diarizer, engine.model, stage_observer=recorder.stage
    )
    app = create_app(
        runner, SessionStore(store_url, timeout_s=1.0), settings, metrics=recorder, **kw
    )
    return TestClient(app)


@pytest.mark.slow
def test_an_upload_records_its_outcome_audio_and_every_stage(
    engine: Any, redis_url: str, talk: Any
) -> None:
    recorder = Recorder()
    with _app(engine, redis_url, recorder) as client:
        r = client.post("/transcribe", files={"file": ("talk.wav", talk.wav_bytes())})
        assert r.status_code == 200, r.text
        stages = dict(recorder.of("stage"))
        bad = client.post("/transcribe", files={"file": ("x.wav", b"garbage" * 50)})
        missing = client.post("/transcribe", data={"language": "en"})
        assert client.get("/healthz").status_code == 200
    assert bad.status_code == 415 and missing.status_code == 422
    assert recorder.of("request") == [
        ("upload", "ok", 200),
        ("upload", "client_error", 415),
        ("upload", "client_error", 422),
    ]
    assert recorder.of("audio") == [("upload", r.json()["duration_ms"] / 1000)]
    assert set(stages) == {"decode", "vad", "diarize", "asr", "segment", "emotion"}
    assert all(seconds > 0 for seconds in stages.values())
    assert stages["asr"] > stages["decode"]  # the model's work, not a constant
    # the failed upload timed its decode, and nothing after it
    assert [s for s, _ in recorder.of("stage")][len(stages) :] == ["decode"]


@pytest.mark.slow
def test_an_openai_upload_records_its_outcome_and_audio(
    engine: Any, redis_url: str, talk: Any
) -> None:
    recorder = Recorder()
    form = {"model": "whisper-1", "diarize": "false", "emotion": "false"}
    with _app(engine, redis_url, recorder) as client:
        r = client.post(
            "/v1/audio/transcriptions", files={"file": ("talk.wav", talk.wav_bytes())}, data=form
        )
        assert r.status_code == 200, r.text
        stored = client.get(f"/sessions/{r.headers['X-Ethostral-Session-Id']}").json()
        bad = client.post(
            "/v1/audio/transcriptions", files={"file": ("x.wav", b"garbage" * 50)}, data=form
        )
    assert bad.status_code == 400
    assert recorder.of("request") == [("upload", "ok", 200), ("upload", "client_error", 400)]
    assert recorder.of("audio") == [("upload", stored["duration_ms"] / 1000)]
    assert stored["duration_ms"] / 1000 == pytest.approx(len(talk.samples) / 16000, abs=0.01)
    assert {s for s, _ in recorder.of("stage")} >= {"decode", "vad", "asr", "segment"}


@pytest.mark.slow
def test_an_upload_while_redis_is_down_is_a_server_error_and_a_redis_error(
    engine: Any, installed: Recorder, talk: Any
) -> None:
    from redis_server import free_port

    with _app(engine, f"redis://127.0.0.1:{free_port()}/0", installed) as client:
        r = client.post("/transcribe", files={"file": ("talk.wav", talk.wav_bytes())})
    assert r.status_code == 503
    assert installed.of("request") == [("upload", "server_error", 503)]
    assert installed.of("redis_error") == [("SessionStore", "ConnectionError")]
    assert installed.of("stage") == [] and installed.of("audio") == []  # refused before work


@pytest.fixture(scope="module")
def stream_backends(engine: Any) -> Any:
    from ethostral_serve.backends.stream import LocalStreamBackends
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad

    return LocalStreamBackends(SileroStreamingVad(), engine.model, engine.diarizer)


def _pcm16(x: Any) -> bytes:
    import numpy as np

    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


@pytest.mark.slow
def test_a_stream_records_active_count_latencies_audio_and_outcome(
    engine: Any, redis_url: str, stream_backends: Any, talk: Any
) -> None:
    recorder = Recorder()
    events: list[dict[str, Any]] = []
    with (
        _app(engine, redis_url, recorder, stream_backends=stream_backends) as client,
        client.websocket_connect("/transcribe/stream?language=en") as ws,
    ):
        pcm = _pcm16(talk.samples)
        for i in range(0, len(pcm), 3200):  # 100 ms frames
            ws.send_bytes(pcm[i : i + 3200])
        ws.send_json({"type": "stop"})
        while not events or events[-1]["type"] not in ("session", "error"):
            events.append(ws.receive_json())
    assert events[-1]["type"] == "session", events[-1]
    recorder.wait_for("request")
    assert recorder.of("request") == [("stream", "ok", 1000)]
    assert recorder.of("active_streams") == [(1,), (0,)]
    latencies = recorder.of("stream_latency")
    for kind in ("partial", "final"):
        sent = sum(e["type"] == kind for e in events)
        assert sum(k == kind for k, _ in latencies) == sent, (kind, latencies)
    assert any(e["type"] == "final" for e in events)
    assert all(seconds > 0 for _, seconds in latencies)
    (audio,) = recorder.of("audio")
    assert audio[0] == "stream" and audio[1] == pytest.approx(len(talk.samples) / 16000, abs=0.01)


@pytest.mark.slow
def test_a_stream_that_could_not_be_stored_records_no_audio(
    engine: Any, stream_backends: Any, talk: Any
) -> None:
    from redis_server import free_port

    recorder = Recorder()
    down = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens: every save fails
    events: list[dict[str, Any]] = []
    with (
        _app(engine, down, recorder, stream_backends=stream_backends) as client,
        client.websocket_connect("/transcribe/stream?language=en&diarize=false") as ws,
    ):
        ws.send_bytes(_pcm16(talk.samples[:32000]))
        ws.send_json({"type": "stop"})
        while not events or events[-1]["type"] not in ("session", "error"):
            events.append(ws.receive_json())
    assert events[-1]["type"] == "error", events[-1]
    recorder.wait_for("request")
    assert recorder.of("request") == [("stream", "server_error", 1013)]
    assert recorder.of("audio") == []  # nothing was stored, so no audio was processed


@pytest.mark.slow
def test_streams_that_fail_or_are_left_record_their_outcome(
    engine: Any, redis_url: str, stream_backends: Any, talk: Any
) -> None:
    from starlette.websockets import WebSocketDisconnect

    recorder = Recorder()
    with _app(engine, redis_url, recorder, stream_backends=stream_backends) as client:
        with client.websocket_connect("/transcribe/stream?sample_rate=5") as ws:
            assert ws.receive_json()["type"] == "error"
            with pytest.raises(WebSocketDisconnect):
                ws.receive_json()
        recorder.wait_for("request", lambda calls: len(calls) == 1)
        with client.websocket_connect("/transcribe/stream?language=en") as ws:
            ws.send_bytes(_pcm16(talk.samples[:16000]))
            ws.close()  # no "stop": the client went away
        recorder.wait_for("request", lambda calls: len(calls) == 2)
    assert recorder.of("request") == [
        ("stream", "client_error", 1008),
        ("stream", "cancelled", 1001),
    ]
    assert recorder.of("active_streams") == [(1,), (0,), (1,), (0,)]


@pytest.mark.slow
def test_jobs_record_done_with_audio_and_cancelled(
    engine: Any, redis_url: str, talk: Any, tmp_path: Path
) -> None:
    from ethostral_serve.api.auth import Access
    from ethostral_serve.api.jobs import Jobs
    from ethostral_serve.settings import JobSettings

    def service(max_running: int, recorder: Recorder) -> Any:
        settings = engine.settings.model_copy(
            update={
                "jobs": JobSettings(
                    spool_dir=tmp_path / f"spool{max_running}",
                    spool_host="test",
                    lease_s=1.0,
                    max_running=max_running,
                )
            }
        )
        jobs = Jobs.from_settings(redis_url, settings, recorder)
        access = Access.from_settings(redis_url, settings)
        return _app(engine, redis_url, recorder, settings=settings, jobs=jobs, access=access)

    form = {"async": "true", "diarize": "false", "emotion": "false", "language": "en"}
    files = {"file": ("talk.wav", talk.wav_bytes())}
    done = Recorder()
    with service(1, done) as client:
        job = client.post("/transcribe", files=files, data=form)
        assert job.status_code == 202, job.text
        deadline = time.monotonic() + WAIT_S
        while (r := client.get(f"/sessions/{job.json()['id']}")).status_code == 202:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert r.status_code == 200, r.text
        done.wait_for("audio")
    assert done.of("request") == [("job", "ok", 200)]  # counted once: as the job it became
    assert done.of("audio") == [("job", r.json()["duration_ms"] / 1000)]
    assert {s for s, _ in done.of("stage")} == {"decode", "vad", "asr", "segment"}

    cancelled = Recorder()
    with service(0, cancelled) as client:  # this replica only queues
        job = client.post("/transcribe", files=files, data=form)
        assert client.delete(f"/sessions/{job.json()['id']}").status_code == 204
    assert cancelled.of("request") == [("job", "cancelled", 499)]
    assert cancelled.of("audio") == []


# --- the ports the deployment files fix, and the dashboard -------------------------------


def test_ethostral_serve_runs_serve_run_with_the_metrics_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ethostral_serve import cli_serve
    from ethostral_serve.cli import main

    started: list[list[str]] = []

    class Child:
        def __init__(self, command: list[str], **kw: Any) -> None:
            started.append(command)

        def wait(self) -> int:
            return 0

    monkeypatch.setattr(cli_serve.subprocess, "Popen", Child)
    monkeypatch.setattr(cli_serve.signal, "signal", lambda *a: None)
    assert main(["serve", "configs/cpu-tiny.yaml", "--metrics-port", "9100"]) == 0
    assert main(["serve"]) == 0
    module = ["-m", "ethostral_serve.serve.serve_run"]
    assert [c[1:] for c in started] == [
        [*module, "configs/cpu-tiny.yaml", "--metrics-port", "9100"],
        [*module, "serve_config.yaml", "--metrics-port", "8080"],
    ]


def test_serve_run_module_takes_a_port_and_refuses_a_bad_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from ethostral_serve.serve.serve_run import parse_args

    assert parse_args(["serve_config.yaml"]).metrics_port == 8080
    assert parse_args(["c.yaml", "--metrics-port", "0"]).metrics_port == 0
    with pytest.raises(SystemExit):
        parse_args(["c.yaml", "--metrics-port", "70000"])
    assert "0-65535" in capsys.readouterr().err


def test_every_ray_start_of_the_cluster_fixes_the_metrics_port() -> None:
    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    for commands in (cluster["head_start_ray_commands"], cluster["worker_start_ray_commands"]):
        starts = [c for c in commands if "ray start" in c]
        assert starts and all("--metrics-export-port=8080" in c for c in starts), starts


def test_every_rayservice_pod_exports_metrics_where_prometheus_is_told_to_scrape() -> None:
    service = yaml.safe_load((REPO / "deploy" / "rayservice.yaml").read_text())
    cluster = service["spec"]["rayClusterConfig"]
    for group in (cluster["headGroupSpec"], *cluster["workerGroupSpecs"]):
        assert group["rayStartParams"]["metrics-export-port"] == "8080"
        template = group["template"]
        annotations = template["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == "8080"
        assert annotations["prometheus.io/path"] == "/metrics"
        ports = {p["name"]: p["containerPort"] for p in template["spec"]["containers"][0]["ports"]}
        assert ports["metrics"] == 8080


def _exported_names() -> set[str]:
    """The names Prometheus sees for what RayMetrics records (Ray adds ``ray_``; counters
    get ``_total``, histograms ``_bucket``/``_sum``/``_count``)."""
    source = (REPO / "ethostral_serve" / "serve" / "metrics.py").read_text()
    suffixes = {"Counter": ["_total"], "Gauge": [""], "Histogram": ["_bucket", "_sum", "_count"]}
    names: set[str] = set()
    for kind, name in re.findall(r"serve_metrics\.(\w+)\(\s*PREFIX \+ \"(\w+)\"", source):
        names |= {f"ray_ethostral_{name}{suffix}" for suffix in suffixes[kind]}
    return names


def test_the_grafana_dashboard_is_valid_and_uses_only_exported_metrics() -> None:
    dashboard = json.loads((REPO / "configs" / "grafana-dashboard.json").read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    exported = _exported_names()
    assert len(exported) == 13  # 3 counters, 1 gauge, 3 histograms of 3 series each
    used: set[str] = set()
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}" and panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bray_ethostral_\w+", target["expr"]))
            assert names and names <= exported, (panel["title"], names - exported)
            used |= names
            if "histogram_quantile" in target["expr"]:
                assert re.search(r"by \([^)]*\ble\b", target["expr"]), target["expr"]
    bases = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in exported}
    shown = {re.sub(r"_(total|bucket|sum|count)$", "", n) for n in used}
    assert shown == bases  # every metric is on the dashboard
    stages = json.dumps([p for p in panels if "stage_seconds_bucket" in json.dumps(p)])
    quantiles = set(re.findall(r"histogram_quantile\((0\.\d+)", stages))
    assert {"0.5", "0.95"} <= quantiles
