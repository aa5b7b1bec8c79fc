"""The Ray Serve graph end to end on a real local Ray: HTTP in, batching, health."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator

import httpx
import numpy as np
import pytest
from conftest import require_data
from prometheus_client.samples import Sample
from redis_server import free_port, redis_server
from speech import meeting_minute, two_speaker_conversation

from ethostral_serve.audio import SAMPLE_RATE

pytestmark = pytest.mark.slow

APP = "ethostral-test"


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def metrics_port() -> int:
    """The local Ray's metrics export port, fixed as the configs fix it (README "Metrics")."""
    return free_port()


@pytest.fixture(scope="module")
def serve_url(redis_url: str, tmp_path_factory, metrics_port: int) -> Iterator[str]:
    """The default graph (embedded models) on a local Ray, sessions in a real Redis."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray
    from ray import serve

    from ethostral_serve.serve.app import AppArgs, build_app

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _metrics_export_port=metrics_port,
    )
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        spool = str(tmp_path_factory.mktemp("spool"))
        app = build_app(
            AppArgs(settings={"redis": {"url": redis_url}, "jobs": {"spool_dir": spool}})
        )
        serve.run(app, name=APP, route_prefix="/", blocking=False)
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url)
        yield url
    finally:
        serve.shutdown()
        ray.shutdown()


def _wait_healthy(url: str, timeout_s: float = 180.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    last = None
    while time.monotonic() < deadline:
        try:
            last = httpx.get(f"{url}/healthz", timeout=10)
            if last.status_code == 200:
                return
        except httpx.HTTPError as exc:
            last = exc
        time.sleep(1.0)
    raise RuntimeError(f"the app never became healthy: {last!r}")


def _model_handle():
    from ray import serve

    return serve.get_deployment_handle("EthostralModel", app_name=APP)


def test_healthz_lists_every_deployment_and_the_store(serve_url: str) -> None:
    r = httpx.get(f"{serve_url}/healthz", timeout=10)
    assert r.status_code == 200
    assert r.json()["checks"] == {
        "store": "ok",
        "VAD": "ok",
        "Diarizer": "ok",
        "EthostralModel": "ok",
    }


def test_upload_through_the_graph(serve_url: str) -> None:
    talk = two_speaker_conversation(turns_each=2)
    r = httpx.post(
        f"{serve_url}/transcribe",
        files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert uuid.UUID(body["id"]) and body["filename"] == "talk.wav"
    assert body["language"] == "en"
    assert len({s["speaker"] for s in body["segments"]}) >= 2
    assert all(s["emotion"]["label"] for s in body["segments"])
    assert httpx.get(f"{serve_url}/sessions/{body['id']}", timeout=10).json() == body
    bad = httpx.post(
        f"{serve_url}/transcribe", files={"file": ("x.wav", b"garbage" * 50)}, timeout=60
    )
    assert bad.status_code == 415 and bad.json()["detail"]


def _scrape(url: str, ready: Callable[[dict[str, list[Sample]]], bool]) -> dict[str, list[Sample]]:
    """Ray's Prometheus endpoint as {sample name: samples} of the ethostral_ metrics, once
    ``ready`` holds: replicas send their records every few seconds (generous bound)."""
    from prometheus_client.parser import text_string_to_metric_families

    deadline = time.monotonic() + 180.0
    while True:
        samples: dict[str, list[Sample]] = {}
        try:
            text = httpx.get(url, timeout=10).text
        except httpx.HTTPError:
            text = ""
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name.startswith("ray_ethostral_"):
                    samples.setdefault(sample.name, []).append(sample)
        if ready(samples):
            return samples
        assert time.monotonic() < deadline, f"metrics never complete at {url}: {sorted(samples)}"
        time.sleep(2.0)


def _total(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The sum of ``name``'s samples whose labels include ``labels`` (over replicas)."""
    return sum(s.value for s in samples.get(name, []) if labels.items() <= s.labels.items())


def _buckets(samples: dict[str, list[Sample]], name: str, **labels: str) -> dict[float, float]:
    """A histogram's cumulative bucket counts {le: count}, summed over replicas."""
    buckets: dict[float, float] = {}
    for s in samples.get(f"{name}_bucket", []):
        if labels.items() <= s.labels.items():
            le = float(s.labels["le"])
            buckets[le] = buckets.get(le, 0.0) + s.value
    return dict(sorted(buckets.items()))


STAGES = ("decode", "vad", "diarize", "asr", "emotion")


def test_metrics_of_an_upload_are_scraped_from_the_fixed_port(
    serve_url: str, metrics_port: int
) -> None:
    """An upload's outcome, audio, stage latencies and the batches it formed reach Ray's
    Prometheus endpoint on the port the fixture fixed."""
    talk = two_speaker_conversation(turns_each=1)
    r = httpx.post(
        f"{serve_url}/transcribe",
        files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    audio_s = r.json()["duration_ms"] / 1000
    # every batch the model replica has formed so far, this upload's among them
    stats = _model_handle().batch_stats.remote().result()
    assert sum(stats["asr"].values()) >= 1 and sum(stats["emotion"].values()) >= 1

    def ready(m: dict[str, list[Sample]]) -> bool:
        return (
            _total(m, "ray_ethostral_requests_total", kind="upload", outcome="ok") >= 1
            and _total(m, "ray_ethostral_audio_seconds_total", kind="upload") >= audio_s
            and all(_total(m, "ray_ethostral_stage_seconds_count", stage=s) >= 1 for s in STAGES)
            and all(
                _total(m, "ray_ethostral_batch_size_count", method=method) >= sum(sizes.values())
                for method, sizes in stats.items()
            )
        )

    m = _scrape(f"http://127.0.0.1:{metrics_port}/metrics", ready)
    uploads = [s for s in m["ray_ethostral_requests_total"] if s.labels["kind"] == "upload"]
    assert {s.labels["status"] for s in uploads if s.labels["outcome"] == "ok"} >= {"200"}
    assert {s.labels["deployment"] for s in uploads} == {"Ingress"}
    for stage in STAGES:
        # timed where the ingress calls the stage: its calls to the model deployments count
        counts = [s for s in m["ray_ethostral_stage_seconds_count"] if s.labels["stage"] == stage]
        assert {(s.labels["deployment"], s.labels["application"]) for s in counts} == {
            ("Ingress", APP)
        }
        buckets = _buckets(m, "ray_ethostral_stage_seconds", stage=stage)
        cumulative = list(buckets.values())
        assert cumulative == sorted(cumulative), (stage, buckets)
        total = _total(m, "ray_ethostral_stage_seconds_count", stage=stage)
        assert buckets[float("inf")] == total and buckets[600.0] == total  # none took 10 min
    # The histogram of batch sizes is the model replica's own tally, bucket by bucket.
    largest = {"asr": 4.0, "emotion": 32.0, "draft": 8.0}  # the config's max batch sizes
    assert set(stats) == set(largest)
    for method, sizes in stats.items():
        buckets = _buckets(m, "ray_ethostral_batch_size", method=method)
        if not sizes:  # e.g. no draft batch before any live stream: no series either
            assert buckets == {}, method
            continue
        expected = {le: sum(n for size, n in sizes.items() if size <= le) for le in buckets}
        assert buckets == expected, (method, sizes)
        assert buckets[largest[method]] == buckets[float("inf")]  # none above the max
        assert {
            s.labels["deployment"]
            for s in m["ray_ethostral_batch_size_count"]
            if s.labels["method"] == method
        } == {"EthostralModel"}


def test_async_upload_through_the_graph_with_progress_events(serve_url: str) -> None:
    talk = two_speaker_conversation(turns_each=2)
    r = httpx.post(
        f"{serve_url}/transcribe",
        files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
        data={"async": "true"},
        timeout=60,
    )
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    statuses = []
    with httpx.stream("GET", f"{serve_url}{r.headers['location']}/events", timeout=300) as ev:
        assert ev.status_code == 200
        for line in ev.iter_lines():
            if line.startswith("event: "):
                statuses.append(line.removeprefix("event: "))
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "done"
    got = httpx.get(f"{serve_url}/sessions/{job_id}", timeout=10)
    assert got.status_code == 200 and got.json()["id"] == job_id
    assert len({s["speaker"] for s in got.json()["segments"]}) >= 2


def test_openai_sdk_transcribes_through_the_graph(serve_url: str) -> None:
    import openai

    client = openai.OpenAI(base_url=serve_url + "/v1", api_key="unused", max_retries=0, timeout=300)
    jfk = ("jfk.flac", (require_data("asr", "jfk") / "jfk.flac").read_bytes(), "audio/flac")
    said = "ask not what your country can do for you"

    def plain(text: str) -> str:
        return " ".join(text.lower().replace(",", "").split())

    result = client.audio.transcriptions.create(file=jfk, model="whisper-1")
    assert said in plain(result.text)
    srt = client.audio.transcriptions.create(file=jfk, model="whisper-1", response_format="srt")
    assert srt.startswith("1\n00:00:") and " --> " in srt and said in plain(srt)
    vtt = client.audio.transcriptions.create(file=jfk, model="whisper-1", response_format="vtt")
    assert vtt.startswith("WEBVTT") and said in plain(vtt)
    talk = two_speaker_conversation(turns_each=2)
    raw = client.audio.transcriptions.with_raw_response.create(
        file=("talk.wav", talk.wav_bytes(), "audio/wav"),
        model="whisper-1",
        response_format="verbose_json",
    )
    verbose = json.loads(raw.text)
    assert verbose["language"] == "english" and verbose["text"]
    segments = verbose["segments"]
    assert len({s["speaker"] for s in segments}) >= 2
    assert all(s["emotion"]["label"] for s in segments)
    # Stored as a session, under the id the header names.
    session_id = raw.headers["x-ethostral-session-id"]
    stored = httpx.get(f"{serve_url}/sessions/{session_id}", timeout=10).json()
    assert " ".join(s["text"] for s in stored["segments"]) == verbose["text"]


def test_ethostral_transcribe_url_sends_jobs_with_progress(
    serve_url: str, tmp_path, capsys
) -> None:
    from ethostral_serve.cli import main

    talk = two_speaker_conversation(turns_each=1)
    audio = tmp_path / "talk.wav"
    audio.write_bytes(talk.wav_bytes())
    code = main(["transcribe", str(audio), "--url", serve_url, "--language", "en"])
    out, err = capsys.readouterr()
    assert code == 0, err
    session = json.loads(out)
    assert session["filename"] == "talk.wav" and session["segments"]
    assert "talk.wav: asr" in err and "segments in" in err  # progress, then the summary
    missing = main(["transcribe", str(tmp_path / "absent.wav"), "--url", serve_url])
    assert missing == 1 and "absent.wav" in capsys.readouterr().err


def test_concurrent_requests_form_batches(serve_url: str) -> None:
    """Windows and segments sent at once by several callers are batched together."""
    from ethostral_serve.audio import decode_audio
    from ethostral_serve.pipeline.types import EmotionInput
    from ethostral_serve.serve.remote import WindowJob

    folder = require_data("asr", "jfk")
    audio = decode_audio(folder / "jfk.flac").samples
    handle = _model_handle()
    before = handle.batch_stats.remote().result()
    windows = [handle.transcribe_window.remote(WindowJob(audio, "en")) for _ in range(8)]
    frames = np.random.default_rng(0).normal(size=(40, 512)).astype(np.float16)
    segments = [handle.classify_segment.remote(EmotionInput(frames=frames)) for _ in range(40)]
    texts = {"".join(w.text for w in r.result().words) for r in windows}
    labels = {r.result().label for r in segments}
    assert len(texts) == 1 and "country" in texts.pop()  # same window, same answer
    assert len(labels) == 1
    after = handle.batch_stats.remote().result()
    for method in ("asr", "emotion"):
        new = {
            size: n - before.get(method, {}).get(size, 0)
            for size, n in after[method].items()
            if n > before.get(method, {}).get(size, 0)
        }
        assert max(new) > 1, f"{method}: no batch larger than one formed: {new}"
    assert max(after["asr"]) <= 4  # the user_config's max_batch_size


def test_concurrent_uploads_share_batches(serve_url: str) -> None:
    """Windows of uploads made at once share ASR batches, however slow the machine.

    Each upload decodes and runs the VAD before its window reaches the model, so on a
    busy machine the four windows can arrive further apart than the default 50 ms
    batch wait. Here a batch waits up to 5 s to fill (it leaves as soon as all four are
    in): the replica's own ``reconfigure`` applies that user_config in place (a new
    ``serve.run`` would restart every replica), and the default after the test.
    """
    from ethostral_serve.serve.deployments import BatchConfig

    folder = require_data("asr", "jfk")
    data = (folder / "jfk.flac").read_bytes()
    handle = _model_handle()
    handle.reconfigure.remote(BatchConfig(batch_wait_timeout_s=5.0).model_dump()).result()
    try:
        before = handle.batch_stats.remote().result()["asr"]

        def upload(i: int) -> httpx.Response:
            return httpx.post(
                f"{serve_url}/transcribe",
                files={"file": (f"jfk{i}.flac", data)},
                data={"language": "en", "diarize": "false"},
                timeout=300,
            )

        with cf.ThreadPoolExecutor(4) as pool:
            responses = list(pool.map(upload, range(4)))
        after = handle.batch_stats.remote().result()["asr"]
    finally:
        handle.reconfigure.remote(BatchConfig().model_dump()).result()
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    assert len({r.json()["id"] for r in responses}) == 4
    texts = [" ".join(s["text"] for s in r.json()["segments"]) for r in responses]
    assert all("country" in t for t in texts), texts
    grown = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in grown.items()) == 4, grown  # one window per upload
    assert max(grown) > 1, f"four concurrent uploads never shared an ASR batch: {after}"


def test_drafts_of_concurrent_streams_share_a_batch(serve_url: str) -> None:
    """Four streams' drafts, due at once, are written in one batch.

    Each stream's thread asks for its draft as the ingress does (``RemoteStreamBackends``),
    all released by one barrier. A draft batch waits up to 5 s to fill here and leaves
    as soon as it holds four (user_config applied in place by ``reconfigure``; the
    default after the test).
    """
    import threading

    from ray import serve

    from benchmarks.common import wer_counts
    from ethostral_serve.serve.deployments import BatchConfig
    from ethostral_serve.serve.remote import RemoteSpeechModel, RemoteStreamBackends

    talk = two_speaker_conversation(turns_each=2)
    clips = [talk.samples[round(a * 16000) : round(b * 16000)] for a, b, _ in talk.truth]
    handle = _model_handle()
    backends = RemoteStreamBackends(
        serve.get_deployment_handle("VAD", app_name=APP),
        serve.get_deployment_handle("Diarizer", app_name=APP),
        RemoteSpeechModel(handle, timeout_s=120.0),
    )
    config = BatchConfig(draft_max_batch_size=4, draft_batch_wait_timeout_s=5.0)
    handle.reconfigure.remote(config.model_dump()).result()
    barrier = threading.Barrier(len(clips))
    try:
        before = handle.batch_stats.remote().result()["draft"]

        def stream(clip: np.ndarray) -> tuple[str, str]:
            barrier.wait(timeout=60)
            return backends.partial(clip, "en")

        with cf.ThreadPoolExecutor(len(clips)) as pool:
            drafts = list(pool.map(stream, clips))
        after = handle.batch_stats.remote().result()["draft"]
    finally:
        handle.reconfigure.remote(BatchConfig().model_dump()).result()
    grown = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert sum(size * n for size, n in grown.items()) == 4, grown  # one draft per stream
    assert max(grown) > 1, f"four concurrent streams never shared a draft batch: {after}"
    assert [language for _, language in drafts] == ["en"] * 4
    wer, _ = wer_counts([talk.reference], [" ".join(text for text, _ in drafts)])
    assert wer < 0.3, drafts  # each draft says its own utterance, in order


def _stream(
    serve_url: str, query: str, samples: np.ndarray, hold_at_s: float | None = None
) -> list[dict]:
    """Stream ``samples`` in 100 ms chunks at about 3x real time; every event, up to
    the session (or an error). With ``hold_at_s`` (a time inside speech), sending
    pauses there until a partial comes: a partial whose utterance has its final is
    dropped, so on a busy machine a stream sent whole may get none."""
    import json
    import time

    from websockets.sync.client import connect

    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    hold = None if hold_at_s is None else round(hold_at_s * SAMPLE_RATE) * 2
    events: list[dict] = []
    with connect(f"ws://{serve_url.removeprefix('http://')}/transcribe/stream?{query}") as ws:
        for i in range(0, len(pcm), 3200):
            ws.send(pcm[i : i + 3200])
            time.sleep(0.03)
            if hold is not None and i + 3200 >= hold:
                hold = None  # mid-utterance, no final can come: wait for its draft
                while not events or events[-1]["type"] != "partial":
                    events.append(json.loads(ws.recv(timeout=300)))
                    assert events[-1]["type"] != "error", events[-1]
        ws.send(json.dumps({"type": "stop"}))
        for message in ws:
            events.append(json.loads(message))
            if events[-1]["type"] in ("session", "error"):
                break
    return events


def test_live_stream_through_the_graph(serve_url: str) -> None:
    talk = two_speaker_conversation(turns_each=1)
    mid_first = talk.truth[0][0] + 2.0  # two seconds into the first utterance
    events = _stream(serve_url, "language=en&diarize=true", talk.samples, hold_at_s=mid_first)
    kinds = [e["type"] for e in events]
    assert kinds[-1] == "session", events[-1]
    assert "partial" in kinds and "final" in kinds
    finals = [e for e in events if e["type"] == "final"]
    assert all(f["emotion"] and f["speaker"].startswith("s") for f in finals)
    stored = httpx.get(f"{serve_url}/sessions/{events[-1]['session_id']}", timeout=10).json()
    assert [s["id"] for s in stored["segments"]] == [f["segment_id"] for f in finals if f["text"]]


def test_a_streamed_meeting_gets_its_speakers_from_the_diarizer_deployment(
    serve_url: str,
) -> None:
    """The speaker pass at the end of a stream runs on the Diarizer deployment: live
    speakers collapse this far-field meeting to one, its stored session has 3 to 5."""
    samples, truth = meeting_minute()
    events = _stream(serve_url, "language=en&diarize=true&emotion=false", samples)
    assert events[-1]["type"] == "session", events[-1]
    stored = httpx.get(f"{serve_url}/sessions/{events[-1]['session_id']}", timeout=10).json()
    found = {s["speaker"] for s in stored["segments"]}
    assert 3 <= len(found) <= 5 and truth == 4, [
        (s["speaker"], s["text"]) for s in stored["segments"]
    ]


def test_ethostral_stream_cli(serve_url: str, capsys) -> None:
    import json

    from ethostral_serve.cli import main

    jfk = require_data("asr", "jfk") / "jfk.flac"
    code = main(["stream", str(jfk), "--url", serve_url, "--language", "en", "--speed", "4"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0
    assert lines[-1]["type"] == "session"
    text = " ".join(e["text"] for e in lines if e["type"] == "final").lower()
    assert "country" in text
    stored = httpx.get(f"{serve_url}/sessions/{lines[-1]['session_id']}", timeout=10).json()
    assert stored["filename"] == "jfk.flac"


def test_ethostral_stream_cli_without_a_service(capsys) -> None:
    from ethostral_serve.cli import main

    jfk = require_data("asr", "jfk") / "jfk.flac"
    code = main(["stream", str(jfk), "--url", f"http://127.0.0.1:{free_port()}"])
    assert code == 1
    assert "cannot reach" in capsys.readouterr().err


def test_user_config_sets_the_batch_size(serve_url: str, redis_url: str) -> None:
    """Redeploying with max_batch_size 1 stops ASR windows from being batched."""
    from ray import serve

    from ethostral_serve.audio import decode_audio
    from ethostral_serve.serve.deployments import VAD, Diarizer, EthostralModel, Ingress
    from ethostral_serve.serve.remote import WindowJob

    overrides = {"redis": {"url": redis_url}}
    model = EthostralModel.options(
        user_config={"max_batch_size": 1, "batch_wait_timeout_s": 0.05}
    ).bind(overrides)
    app = Ingress.bind(VAD.bind(overrides), Diarizer.bind(overrides), model, overrides)
    serve.run(app, name=APP, route_prefix="/", blocking=False)
    _wait_healthy(serve_url)
    handle = _model_handle()
    before = handle.batch_stats.remote().result()["asr"]
    audio = decode_audio(require_data("asr", "jfk") / "jfk.flac").samples
    pending = [handle.transcribe_window.remote(WindowJob(audio, "en")) for _ in range(4)]
    assert all("country" in "".join(w.text for w in r.result().words) for r in pending)
    after = handle.batch_stats.remote().result()["asr"]
    grown = {size: n - before.get(size, 0) for size, n in after.items() if n > before.get(size, 0)}
    assert grown == {1: 4}


def test_ethostral_and_pyannote_selected_by_the_tiny_config_serve_uploads_and_streams(
    serve_url: str, redis_url: str, tmp_path_factory, tagging_voxtral
) -> None:
    """Redeploy with ``configs/ethostral-tiny.yaml``'s settings, pointed at a tiny Voxtral
    whose LoRA adapter writes one tagged sentence for any audio, and a tiny random
    pyannote pipeline (its speakers mean nothing)."""
    import json
    from pathlib import Path

    import yaml
    from ray import serve
    from tiny_pyannote import build_tiny_pyannote
    from tiny_voxtral import build_tiny_adapter
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    from ethostral_serve.serve.app import AppArgs, build_app

    base, adapter = tagging_voxtral  # writes "[angry] stop that now [coughs] okay"
    root = base.parent
    assert adapter == root / "adapter"  # the layout the config names
    build_tiny_pyannote(root / "pyannote")
    config = Path(__file__).resolve().parents[1] / "configs" / "ethostral-tiny.yaml"
    text = config.read_text(encoding="utf-8").replace("/tmp/ethostral-tiny", str(root))
    (app_config,) = yaml.safe_load(text)["applications"]
    settings = {**app_config["args"]["settings"], "redis": {"url": redis_url}}
    plain = build_tiny_adapter(base, root / "plain")  # a second, random adapter
    settings["ethostral"] = {**settings["ethostral"], "adapters": {"plain": str(plain)}}
    serve.run(build_app(AppArgs(settings=settings)), name=APP, route_prefix="/", blocking=False)
    _wait_healthy(serve_url)
    assert _model_handle().backend.remote().result() == "EthostralSpeechModel"
    diarizer = serve.get_deployment_handle("Diarizer", app_name=APP)
    assert diarizer.backend.remote().result() == "PyannoteDiarizer"
    talk = two_speaker_conversation(turns_each=1)
    embedding = diarizer.embed_utterance.remote(talk.samples[:32000]).result()
    assert embedding is not None and np.linalg.norm(embedding) == pytest.approx(1.0, abs=1e-5)

    r = httpx.post(
        f"{serve_url}/transcribe",
        files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    session = r.json()
    assert session["language"] == "en" and session["segments"]  # told by Whisper base
    said = " ".join(s["text"] for s in session["segments"])
    assert said.replace("stop that now okay", "").strip() == ""  # tags stripped
    for segment in session["segments"]:
        assert segment["speaker"].startswith("s") and segment["words"]
        assert segment["emotion"]["label"] == "Angry"  # from the tag: [angry]
        assert segment["emotion"]["confidence"] > 0.9
    stored = httpx.get(f"{serve_url}/sessions/{session['id']}", timeout=30).json()
    assert stored == session
    # a named adapter, multiplexed onto the same base: its own (random) transcript
    r = httpx.post(
        f"{serve_url}/transcribe",
        files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
        data={"language": "en", "adapter": "plain"},
        timeout=300,
    )
    assert r.status_code == 200, r.text
    assert "stop that now" not in " ".join(s["text"] for s in r.json()["segments"])
    r = httpx.post(
        f"{serve_url}/transcribe",
        files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
        data={"adapter": "nope"},
        timeout=60,
    )
    assert r.status_code == 422
    assert r.json()["detail"] == "unknown adapter 'nope'; available: plain"

    events = _stream(serve_url, "language=en&diarize=true", talk.samples)
    assert events[-1]["type"] == "session", events[-1]
    finals = [e for e in events if e["type"] == "final" and e["text"]]
    # utterances that queued are read as one window, whose sentence is split among them
    said = " ".join(f["text"] for f in finals)
    assert said.replace("stop that now okay", "").strip() == ""
    assert all(f["emotion"] and f["speaker"].startswith("s") for f in finals)
    assert finals[0]["emotion"]["label"] == "Angry"  # the utterance holding the tag
    partials = [e for e in events if e["type"] == "partial" and e["text"]]
    assert partials and all("stop that now okay".startswith(p["text"]) for p in partials)
    assert all(p["emotion"] is None for p in partials)  # drafts carry no emotion
    stored = httpx.get(f"{serve_url}/sessions/{events[-1]['session_id']}", timeout=30).json()
    assert [s["id"] for s in stored["segments"]] == [f["segment_id"] for f in finals]
    assert stored["language"] == "en"
    host = serve_url.removeprefix("http://")
    with connect(f"ws://{host}/transcribe/stream?adapter=nope") as ws:
        ws.send(b"\0\0" * 1600)
        event = json.loads(ws.recv())
        with pytest.raises(ConnectionClosed):
            ws.recv()
    assert event == {"type": "error", "detail": "unknown adapter 'nope'; available: plain"}
    assert ws.close_code == 1008


def test_ethostral_on_an_inference_endpoint_by_the_endpoint_config_serves_uploads_and_streams(
    serve_url: str, redis_url: str, tagging_voxtral
) -> None:
    """Redeploy with ``configs/endpoint-tiny.yaml``'s settings, pointed at the endpoint
    handler served here as Inference Endpoints serves it (``local_server.py``) on the tiny
    tagging Voxtral; then take the handler away: uploads get 503 'model unavailable'."""
    import sys
    from pathlib import Path

    import yaml
    from ray import serve

    from ethostral_serve.serve.app import AppArgs, build_app

    repo = Path(__file__).resolve().parents[1]
    sys.path.insert(0, str(repo / "deploy" / "hf-endpoint"))
    from local_server import load_handler, serving

    base, _ = tagging_voxtral  # writes "[angry] stop that now [coughs] okay"
    os.environ["ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS"] = "64"
    try:
        handler = load_handler(base.parent)  # holds voxtral/ and adapter/
    finally:
        del os.environ["ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS"]
    talk = two_speaker_conversation(turns_each=1)
    config = (repo / "configs" / "endpoint-tiny.yaml").read_text(encoding="utf-8")
    with serving(handler) as endpoint:
        text = config.replace("http://127.0.0.1:8081/", endpoint.url)
        (app_config,) = yaml.safe_load(text)["applications"]
        settings = {**app_config["args"]["settings"], "redis": {"url": redis_url}}
        settings["endpoint"] = {**settings["endpoint"], "retry_backoff_s": 0.1}
        assert settings["speech_model"] == "endpoint"
        assert settings["endpoint"]["url"] == endpoint.url
        app = build_app(AppArgs(settings=settings))
        serve.run(app, name=APP, route_prefix="/", blocking=False)
        _wait_healthy(serve_url)
        assert _model_handle().backend.remote().result() == "EndpointSpeechModel"

        r = httpx.post(
            f"{serve_url}/transcribe",
            files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
            timeout=300,
        )
        assert r.status_code == 200, r.text
        session = r.json()
        assert endpoint.calls >= 1  # the windows went to the endpoint
        assert session["language"] == "en" and session["segments"]  # Whisper base, here
        said = " ".join(s["text"] for s in session["segments"])
        assert said.replace("stop that now okay", "").strip() == ""  # tags stripped
        for segment in session["segments"]:
            assert segment["speaker"].startswith("s") and segment["words"]
            assert segment["emotion"]["label"] == "Angry"  # from the tag: [angry]
            assert segment["emotion"]["confidence"] > 0.9

        before = endpoint.calls
        events = _stream(serve_url, "language=en&diarize=true", talk.samples)
        assert events[-1]["type"] == "session", events[-1]
        finals = [e for e in events if e["type"] == "final" and e["text"]]
        assert finals and endpoint.calls > before  # finals are read on the endpoint
        said = " ".join(f["text"] for f in finals)
        assert said.replace("stop that now okay", "").strip() == ""
        assert finals[0]["emotion"]["label"] == "Angry"
        partials = [e for e in events if e["type"] == "partial" and e["text"]]
        # drafts are written here by Whisper (endpoint.drafts: local): real words
        assert partials and not any("stop that now" in p["text"] for p in partials)
        stored = httpx.get(f"{serve_url}/sessions/{events[-1]['session_id']}", timeout=30)
        assert [s["id"] for s in stored.json()["segments"]] == [f["segment_id"] for f in finals]

    # the endpoint is gone: retried, then the service's 503 'model unavailable'
    r = httpx.post(
        f"{serve_url}/transcribe",
        files={"file": ("talk.wav", talk.wav_bytes(), "audio/wav")},
        timeout=300,
    )
    assert r.status_code == 503, r.text
    assert r.json()["detail"].startswith("the speech model endpoint is unavailable (ConnectError")
    assert "3 attempts" in r.json()["detail"] and r.headers["retry-after"]
