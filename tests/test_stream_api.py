"""WS /transcribe/stream in-process over the real models and a real Redis."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from live_server import serving
from redis_server import redis_server
from speech import meeting_minute, two_speaker_conversation
from starlette.websockets import WebSocketDisconnect

from benchmarks.common import speaker_agreement, wer_counts
from ethostral_serve.api.app import create_app
from ethostral_serve.pipeline.compose import to_ms
from ethostral_serve.pipeline.live_stream import LiveStream, StreamParams
from ethostral_serve.runner import PipelineRunner
from ethostral_serve.schema import EMOTION_LABELS
from ethostral_serve.sessions import SessionStore

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture(scope="module")
def stream_backends(engine):
    from ethostral_serve.backends.stream import LocalStreamBackends
    from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad

    return LocalStreamBackends(SileroStreamingVad(), engine.model, engine.diarizer)


def _client(engine, stream_backends, redis_url: str, **stream_settings) -> TestClient:
    settings = engine.settings.model_copy(
        update={"stream": engine.settings.stream.model_copy(update=stream_settings)}
    )
    runner = PipelineRunner.traced(settings, engine.vad, engine.diarizer, engine.model)
    app = create_app(runner, SessionStore(redis_url), settings, stream_backends=stream_backends)
    return TestClient(app)


def _until_session(ws) -> list[dict]:
    """Every event up to the session (or an error), in order."""
    events: list[dict] = []
    while not events or events[-1]["type"] not in ("session", "error"):
        events.append(ws.receive_json())
    return events


def _pcm16(x: np.ndarray) -> bytes:
    return (np.clip(x, -1, 1) * 32767).astype("<i2").tobytes()


def _close_code(ws) -> int:
    """The code the server closes ``ws`` with, once it has nothing more to send."""
    with pytest.raises(WebSocketDisconnect) as closed:
        ws.receive_json()
    return closed.value.code


def _session_keys(url: str) -> set[bytes]:
    with redis.Redis.from_url(url) as r:
        keys = r.keys("ethostral:session:*")
    # sessions only: not their owner keys or the listing index
    return {k for k in keys if re.fullmatch(rb"ethostral:session:[0-9a-f-]{36}", k)}


CHUNK = 1600  # 100 ms


def _partials_owed(engine, stream_backends, samples: np.ndarray) -> list[tuple[int, int]]:
    """``(chunk index, start_ms)``: for each utterance the stream's endpointing finds in
    ``samples`` sent in 100 ms chunks, the first chunk after which a partial of it is due
    while it is still open, and the utterance's start.

    The VAD scores each 512-sample frame with state carried between calls, so the
    endpointing decides the same whatever chunks the server happens to read together:
    once the audio up to that chunk is sent and nothing after it, the server owes a
    partial of that utterance (drafting it is only skipped for waiting longer than
    ``max_draft_wait_s``, and only stale once the utterance has a final).
    """
    live = LiveStream(
        StreamParams(language="en"),
        stream_backends,
        engine.settings,
        language="en",
    )
    owed: list[tuple[int, int]] = []
    seen: set[int] = set()
    for k, i in enumerate(range(0, len(samples), CHUNK)):
        # step() coalesces: a partial it returns has no final after it, so is still open
        for due in live.step(live.decode(_pcm16(samples[i : i + CHUNK]))):  # what is sent
            if due.kind == "partial" and due.utterance not in seen:
                seen.add(due.utterance)
                owed.append((k, to_ms(due.start)))
    return owed


def _next_event(ws, timeout_s: float = 120.0) -> dict:
    event = json.loads(ws.recv(timeout=timeout_s))
    assert event["type"] != "error", event
    return event


def test_two_speaker_stream_partials_finals_and_session(
    engine, stream_backends, redis_url: str
) -> None:
    """Nothing here depends on how fast audio arrives or the models answer.

    Audio goes as fast as the socket takes it, except that after the chunk where a
    partial of an utterance is due, the client waits for that partial. Finals that
    queue up while one runs share an ASR window, so the final text depends on load;
    the WER bound holds for every grouping the server can make: measured offline over
    all 2028 contiguous groupings of this talk's 12 utterances (121 words), WER is
    0.066-0.157 (0.116 with each read alone), 19 errors at worst where 0.25 allows 30.
    """
    from websockets.exceptions import ConnectionClosedOK
    from websockets.sync.client import connect

    talk = two_speaker_conversation(turns_each=5)
    owed = dict(_partials_owed(engine, stream_backends, talk.samples))
    assert len(owed) >= 10  # one per utterance
    events: list[dict] = []
    # drafts are never skipped for waiting, so every partial owed is sent
    client = _client(engine, stream_backends, redis_url, max_draft_wait_s=3600.0)
    with serving(client.app) as url:
        with connect(f"ws://{url.removeprefix('http://')}/transcribe/stream?language=en") as ws:
            for k, i in enumerate(range(0, len(talk.samples), CHUNK)):
                ws.send(_pcm16(talk.samples[i : i + CHUNK]))
                if k in owed:
                    while not (
                        events
                        and events[-1]["type"] == "partial"
                        and events[-1]["start_ms"] == owed[k]
                    ):
                        events.append(_next_event(ws))
            ws.send(json.dumps({"type": "stop"}))
            while not events or events[-1]["type"] != "session":
                events.append(_next_event(ws))
            with pytest.raises(ConnectionClosedOK):
                ws.recv(timeout=30)
            assert ws.close_code == 1000
        stored = httpx.get(f"{url}/sessions/{events[-1]['session_id']}", timeout=30).json()
    partials = [e for e in events if e["type"] == "partial"]
    finals = [e for e in events if e["type"] == "final"]
    assert len(partials) >= len(owed)
    assert all(p["emotion"] is None for p in partials)
    for f in finals:
        assert f["speaker"].startswith("s") and f["segment_id"]
        assert f["emotion"]["label"] in EMOTION_LABELS
        assert 0 <= f["start_ms"] < f["end_ms"] <= talk.duration_ms + 50
    # partials of an utterance share its final's segment_id
    final_ids = {f["start_ms"]: f["segment_id"] for f in finals}
    assert set(owed.values()) <= set(final_ids)  # every utterance drafted got its final
    assert all(final_ids.get(p["start_ms"]) == p["segment_id"] for p in partials)
    assert len({s["speaker"] for s in stored["segments"]}) >= 2
    assert speaker_agreement(stored["segments"], talk.truth) > 0.85
    wer, _ = wer_counts([talk.reference], [" ".join(s["text"] for s in stored["segments"])])
    assert wer <= 0.25
    # each final's segment is stored under its segment_id (the speaker pass may split a
    # final holding two voices: its first piece keeps the id), in order
    stored_ids = [s["id"] for s in stored["segments"]]
    positions = [stored_ids.index(f["segment_id"]) for f in finals if f["text"]]
    assert positions == sorted(positions)


def test_start_message_and_resampling(engine, stream_backends, redis_url: str) -> None:
    import soxr

    talk = two_speaker_conversation(turns_each=1)
    x = soxr.resample(talk.samples, 16000, 44100).astype("<f4")
    with (
        _client(engine, stream_backends, redis_url) as client,
        client.websocket_connect("/transcribe/stream") as ws,
    ):
        start = {"type": "start", "sample_rate": 44100, "encoding": "pcm_f32le", "emotion": False}
        ws.send_text(json.dumps(start))
        data = x.tobytes()
        for i in range(0, len(data), 7001):  # sizes that split samples
            ws.send_bytes(data[i : i + 7001])
        ws.send_text('{"type": "stop"}')
        events = _until_session(ws)
        finals = [e for e in events if e["type"] == "final"]
        assert finals and all(f["emotion"] is None for f in finals)
        text = " ".join(f["text"] for f in finals)
        wer, _ = wer_counts([talk.reference], [text])
        assert wer <= 0.25


@pytest.mark.parametrize(("limit", "most"), [(None, 2), (1, 1)])
def test_max_speakers_caps_a_streams_speakers(
    engine, stream_backends, redis_url: str, limit: int | None, most: int
) -> None:
    talk = two_speaker_conversation(turns_each=1)
    start = {"type": "start", "language": "en", "emotion": False}
    if limit is not None:
        start["max_speakers"] = limit
    with (
        _client(engine, stream_backends, redis_url) as client,
        client.websocket_connect("/transcribe/stream") as ws,
    ):
        ws.send_text(json.dumps(start))
        ws.send_bytes(_pcm16(talk.samples))
        ws.send_text('{"type": "stop"}')
        events = _until_session(ws)
        assert events[-1]["type"] == "session", events[-1]
        stored = client.get(f"/sessions/{events[-1]['session_id']}").json()
    # the two voices are told apart without a cap, and never split beyond it
    assert len({s["speaker"] for s in stored["segments"]}) == most


@pytest.mark.parametrize(
    ("query", "needle"),
    [
        ("sample_rate=abc", "sample_rate"),
        ("encoding=mp3", "encoding"),
        ("sample_rate=100", "sample_rate"),
        ("colour=blue", "colour"),
        ("language=klingon", "klingon"),
        ("adapter=nope", "'nope'; available: this speech model has no named adapters"),
        ("num_speakers=0", "num_speakers"),
        ("min_speakers=3&max_speakers=2", "must not be larger than max_speakers"),
        ("max_speakers=51", "max_speakers"),
    ],
)
def test_bad_parameters_close_1008(
    engine, stream_backends, redis_url: str, query: str, needle: str
) -> None:
    with (
        _client(engine, stream_backends, redis_url) as client,
        client.websocket_connect(f"/transcribe/stream?{query}") as ws,
    ):
        ws.send_bytes(b"\0\0" * 1600)
        event = ws.receive_json()
        assert event["type"] == "error" and needle in event["detail"]
        assert _close_code(ws) == 1008


@pytest.mark.parametrize("text", ["hello", "[1, 2]", '{"type": "dance"}'])
def test_text_garbage_closes_1003(engine, stream_backends, redis_url: str, text: str) -> None:
    with (
        _client(engine, stream_backends, redis_url) as client,
        client.websocket_connect("/transcribe/stream") as ws,
    ):
        ws.send_text(text)
        event = ws.receive_json()
        assert event["type"] == "error" and event["detail"]
        assert _close_code(ws) == 1003


def test_oversize_frame_closes_1009_and_keeps_the_session(
    engine, stream_backends, redis_url: str
) -> None:
    before = _session_keys(redis_url)
    with (
        _client(engine, stream_backends, redis_url, max_frame_bytes=64_000) as client,
        client.websocket_connect("/transcribe/stream") as ws,
    ):
        ws.send_bytes(b"\0\0" * 16_000)
        ws.send_bytes(b"\0" * 64_001)
        event = ws.receive_json()
        assert event["type"] == "error" and "64000" in event["detail"]
        assert _close_code(ws) == 1009
    assert len(_session_keys(redis_url) - before) == 1


def test_idle_stream_is_closed(engine, stream_backends, redis_url: str) -> None:
    with (
        _client(engine, stream_backends, redis_url, idle_timeout_s=0.5) as client,
        client.websocket_connect("/transcribe/stream") as ws,
    ):
        time.sleep(1.0)
        event = ws.receive_json()
        assert event["type"] == "error" and "idle" in event["detail"]
        assert _close_code(ws) == 1008


def test_an_idle_stream_keeps_what_was_said_before_it_went_quiet(
    engine, stream_backends, redis_url: str
) -> None:
    talk = two_speaker_conversation(turns_each=1)
    first = talk.samples[: int(talk.truth[0][1] * 16000)]  # ends mid-utterance: no final yet
    before = _session_keys(redis_url)
    with (
        _client(engine, stream_backends, redis_url, idle_timeout_s=1.0) as client,
        client.websocket_connect("/transcribe/stream?language=en") as ws,
    ):
        ws.send_bytes(_pcm16(first))
        events = []
        while not events or events[-1]["type"] != "error":
            events.append(ws.receive_json())
        assert "idle" in events[-1]["detail"]
        finals = [e for e in events if e["type"] == "final"]
        assert finals and finals[-1]["end_ms"] >= talk.truth[0][1] * 1000 - 200
        assert _close_code(ws) == 1008
    (key,) = _session_keys(redis_url) - before
    with redis.Redis.from_url(redis_url) as r:
        stored = json.loads(r.get(key))
    assert events[-1]["session_id"] == stored["id"]  # the client learns where it went
    # each final's segment is stored under its segment_id (the speaker pass may split a
    # final holding two voices: its first piece keeps the id), in order
    stored_ids = [s["id"] for s in stored["segments"]]
    positions = [stored_ids.index(f["segment_id"]) for f in finals if f["text"]]
    assert positions == sorted(positions)


def test_abrupt_disconnect_still_stores_finalised_segments(
    engine, stream_backends, redis_url: str
) -> None:
    from websockets.sync.client import connect

    talk = two_speaker_conversation(turns_each=1)
    before = _session_keys(redis_url)
    client = _client(engine, stream_backends, redis_url)
    with serving(client.app) as url:
        ws = connect(f"ws://{url.removeprefix('http://')}/transcribe/stream?language=en")
        for i in range(0, len(talk.samples), 1600):
            ws.send(_pcm16(talk.samples[i : i + 1600]))
        time.sleep(1.0)
        ws.socket.close()  # no stop, no close handshake: the connection just drops
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (_session_keys(redis_url) - before):
            time.sleep(0.2)
    (key,) = _session_keys(redis_url) - before
    with redis.Redis.from_url(redis_url) as r:
        stored = json.loads(r.get(key))
    assert stored["segments"], "segments finalised before the disconnect were lost"
    wer, _ = wer_counts([talk.reference], [" ".join(s["text"] for s in stored["segments"])])
    assert wer <= 0.3


@pytest.mark.parametrize("language", ["auto", "", "AUTO"])
def test_auto_or_empty_language_means_detect(
    engine, stream_backends, redis_url: str, language: str
) -> None:
    talk = two_speaker_conversation(turns_each=1)
    first = talk.samples[: int(talk.truth[0][1] * 16000) + 16000]
    with (
        _client(engine, stream_backends, redis_url) as client,
        client.websocket_connect(f"/transcribe/stream?language={language}") as ws,
    ):
        ws.send_bytes(_pcm16(first))
        ws.send_text('{"type": "stop"}')
        events = _until_session(ws)
        assert events[-1]["type"] == "session", events[-1]
        stored = client.get(f"/sessions/{events[-1]['session_id']}").json()
    assert stored["language"] == "en"  # detected, the same as an upload with language=auto
    assert stored["segments"]


def test_a_stream_over_the_limit_is_closed_1013_and_the_others_go_on(
    engine, stream_backends, redis_url: str
) -> None:
    talk = two_speaker_conversation(turns_each=1)
    first = talk.samples[: int(talk.truth[0][1] * 16000) + 16000]
    with _client(engine, stream_backends, redis_url, max_streams=1) as client:
        with client.websocket_connect("/transcribe/stream?language=en") as ws:
            ws.send_bytes(_pcm16(first[:16000]))
            with client.websocket_connect("/transcribe/stream") as extra:
                error = extra.receive_json()
                assert error["type"] == "error" and "limit of 1 live streams" in error["detail"]
                assert _close_code(extra) == 1013
            ws.send_bytes(_pcm16(first[16000:]))
            ws.send_text('{"type": "stop"}')
            events = []
            while not events or events[-1]["type"] not in ("session", "error"):
                events.append(ws.receive_json())
            assert events[-1]["type"] == "session"
            assert any(e["type"] == "final" and e["text"] for e in events)
            assert _close_code(ws) == 1000  # the stream has ended
        # its slot is free again
        with client.websocket_connect("/transcribe/stream") as again:
            again.send_text('{"type": "stop"}')
            assert again.receive_json()["type"] == "session"


def _stream(client: TestClient, samples: np.ndarray, **start) -> tuple[list[dict], dict]:
    """Send ``samples`` as one stream; its events and the stored session."""
    with client.websocket_connect("/transcribe/stream") as ws:
        ws.send_text(json.dumps({"type": "start", "language": "en", "emotion": False, **start}))
        for i in range(0, len(samples), 16000):
            ws.send_bytes(_pcm16(samples[i : i + 16000]))
        ws.send_text('{"type": "stop"}')
        events = _until_session(ws)
    assert events[-1]["type"] == "session", events[-1]
    return events, client.get(f"/sessions/{events[-1]['session_id']}").json()


def test_a_far_field_meeting_stream_stores_its_speakers(
    engine, stream_backends, redis_url: str
) -> None:
    """Online, one embedding per utterance cannot tell four far-field voices apart (an
    utterance holds several); the pass over the whole stream at its end does."""
    samples, truth = meeting_minute()
    assert truth == 4
    with _client(engine, stream_backends, redis_url) as client:
        events, stored = _stream(client, samples)
    finals = [e for e in events if e["type"] == "final" and e["text"]]
    found = {s["speaker"] for s in stored["segments"]}
    assert 3 <= len(found) <= 5, (
        len(found),
        [(s["speaker"], s["text"]) for s in stored["segments"]],
    )
    # nothing said is lost or changed by the split: the same words, in the same order
    said = " ".join(f["text"] for f in finals).split()
    assert " ".join(s["text"] for s in stored["segments"]).split() == said
    assert len(stored["segments"]) >= len(finals)
    ids = {s["id"] for s in stored["segments"]}
    assert all(f["segment_id"] in ids for f in finals)


class _Spy:
    """Stream backends whose whole-stream diarization is counted, or fails."""

    def __init__(self, inner, fail: bool = False) -> None:
        self._inner = inner
        self.fail = fail
        self.calls = 0
        self.regions: list = []  # what the last whole-stream diarization was given

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def diarize(self, samples, regions, speakers):
        self.calls += 1
        self.regions = list(regions)
        if self.fail:
            raise RuntimeError("diarizer replica died")
        return self._inner.diarize(samples, regions, speakers)


def test_the_speaker_pass_diarizes_the_speech_an_upload_would(
    engine, stream_backends, redis_url: str
) -> None:
    """The pass is given the regions the offline VAD finds in the stream's audio (from
    the probabilities the stream's own VAD gave), not the finals' utterances."""
    talk = two_speaker_conversation(turns_each=2)
    spy = _Spy(stream_backends)
    with _client(engine, spy, redis_url) as client:
        events, _ = _stream(client, talk.samples)
    heard = np.frombuffer(_pcm16(talk.samples), "<i2").astype(np.float32) / 32768.0
    upload = [edge for r in engine.vad.speech_regions(heard) for edge in (r.start, r.end)]
    passed = [edge for r in spy.regions for edge in (r.start, r.end)]
    finals = [e[k] / 1000 for e in events if e["type"] == "final" for k in ("start_ms", "end_ms")]
    frame = 512 / 16000
    assert spy.calls == 1 and len(upload) >= 4
    assert passed == pytest.approx(upload, abs=frame)
    # the finals' utterances are other spans (the stream's endpointing): a real check
    assert finals != pytest.approx(upload, abs=frame)


@pytest.mark.parametrize(
    ("fail", "refine_max_s", "calls"),
    [(True, 1800.0, 1), (False, 5.0, 0), (False, 0.0, 0)],
    ids=["diarizer-fails", "longer-than-the-limit", "off"],
)
def test_the_online_speakers_stay_when_the_speaker_pass_cannot_run(
    engine, stream_backends, redis_url: str, fail: bool, refine_max_s: float, calls: int
) -> None:
    talk = two_speaker_conversation(turns_each=2)
    spy = _Spy(stream_backends, fail=fail)
    client = _client(engine, spy, redis_url, refine_speakers_max_s=refine_max_s)
    with client:
        events, stored = _stream(client, talk.samples)
    assert spy.calls == calls
    finals = [e for e in events if e["type"] == "final" and e["text"]]
    assert finals
    assert [(s["id"], s["speaker"]) for s in stored["segments"]] == [
        (f["segment_id"], f["speaker"]) for f in finals
    ]


def test_a_stream_without_diarization_keeps_no_audio_and_one_speaker(
    engine, stream_backends, redis_url: str
) -> None:
    talk = two_speaker_conversation(turns_each=1)
    spy = _Spy(stream_backends)
    with _client(engine, spy, redis_url) as client:
        _, stored = _stream(client, talk.samples, diarize=False)
    assert spy.calls == 0
    assert stored["segments"] and {s["speaker"] for s in stored["segments"]} == {"s0"}


class _DyingModel(_Spy):
    """Real stream backends whose model replica dies after its first final."""

    def __init__(self, inner) -> None:
        super().__init__(inner)
        self.final_calls = 0

    def finals(self, *args, **kwargs):
        from ethostral_serve.errors import BackendUnavailableError

        self.final_calls += 1
        if self.final_calls > 1:
            raise BackendUnavailableError(
                "the EthostralModel replica serving this request stopped (ActorDiedError)"
            )
        return self._inner.finals(*args, **kwargs)


def test_a_stream_whose_model_replica_dies_closes_1013_and_keeps_its_finals(
    engine, stream_backends, redis_url: str
) -> None:
    from ethostral_serve.backends.windows import MAX_WINDOW_S

    # More speech than one ASR window holds: however the finals queue up (they are
    # joined up to one window per call), a second call comes, and the replica dies there.
    talk = two_speaker_conversation(turns_each=4)
    assert sum(end - start for start, end, _ in talk.truth) > MAX_WINDOW_S
    dying = _DyingModel(stream_backends)
    with (
        _client(engine, dying, redis_url) as client,
        client.websocket_connect("/transcribe/stream?language=en&emotion=false") as ws,
    ):
        pcm = _pcm16(talk.samples)
        for i in range(0, len(pcm), 2 * CHUNK):
            ws.send_bytes(pcm[i : i + 2 * CHUNK])
        ws.send_json({"type": "stop"})
        events: list[dict] = []
        while not events or events[-1]["type"] not in ("session", "error"):
            events.append(ws.receive_json())
        code = _close_code(ws)
    assert code == 1013
    error = events[-1]
    assert error["type"] == "error" and "replica" in error["detail"]
    finals = [e for e in events if e["type"] == "final" and e["text"]]
    assert finals  # the first utterance was finalised before the replica died
    stored = client.get(f"/sessions/{error['session_id']}").json()
    ids = [s["id"] for s in stored["segments"]]
    assert all(f["segment_id"] in ids for f in finals)


def test_invalid_audio_closes_1007_after_finalising_what_came_before(
    engine, stream_backends, redis_url: str
) -> None:
    talk = two_speaker_conversation(turns_each=1)
    good = talk.samples.astype("<f4").tobytes()
    bad = np.array([0.1, np.nan, 0.2], dtype="<f4").tobytes()
    with (
        _client(engine, stream_backends, redis_url) as client,
        client.websocket_connect(
            "/transcribe/stream?encoding=pcm_f32le&language=en&emotion=false&diarize=false"
        ) as ws,
    ):
        for i in range(0, len(good), 4 * 3200):
            ws.send_bytes(good[i : i + 4 * 3200])
        ws.send_bytes(bad)
        events: list[dict] = []
        while not events or events[-1]["type"] != "error":
            events.append(ws.receive_json())
        assert _close_code(ws) == 1007
    assert "NaN" in events[-1]["detail"]
    finals = [e for e in events if e["type"] == "final" and e["text"]]
    assert len(finals) >= 2  # both speakers' utterances, the last one finalised at the close
    stored = client.get(f"/sessions/{events[-1]['session_id']}").json()
    assert [s["id"] for s in stored["segments"]] == [f["segment_id"] for f in finals]


class _DeadModel(_Spy):
    """Stream backends whose model deployment is down when the stream opens."""

    def check_language(self, language):
        from ethostral_serve.errors import BackendUnavailableError

        raise BackendUnavailableError("the EthostralModel deployment did not answer")


def test_a_stream_opened_while_the_model_is_down_closes_1013(
    engine, stream_backends, redis_url: str
) -> None:
    with (
        _client(engine, _DeadModel(stream_backends), redis_url) as client,
        client.websocket_connect("/transcribe/stream") as ws,
    ):
        ws.send_bytes(b"\0\0" * 1600)
        event = ws.receive_json()
        assert _close_code(ws) == 1013  # try again later, not "bad parameters" (1008)
    assert event["type"] == "error" and "EthostralModel" in event["detail"]


@pytest.mark.parametrize("ending", ["invalid-audio", "stop"])
def test_a_session_that_cannot_be_stored_closes_1011_with_a_logged_error_id(
    engine, stream_backends, redis_url: str, monkeypatch, caplog, ending: str
) -> None:
    """Storing the stream fails unexpectedly (a session saying it has audio that is not
    given: the store refuses it as a bug), on a stream ending in an error of its own or
    normally: the stream closes 1011 with an error id the server log has."""
    monkeypatch.setattr(
        LiveStream,
        "stored",
        lambda self: (self.session().model_copy(update={"has_audio": True}), None),
    )
    with (
        _client(engine, stream_backends, redis_url) as client,
        client.websocket_connect(
            "/transcribe/stream?encoding=pcm_f32le&language=en&emotion=false&diarize=false"
        ) as ws,
    ):
        ws.send_bytes(np.zeros(8000, dtype="<f4").tobytes())
        if ending == "stop":
            ws.send_json({"type": "stop"})
        else:
            ws.send_bytes(np.array([np.nan], dtype="<f4").tobytes())
        error = _until_session(ws)[-1]
        assert _close_code(ws) == 1011
    assert error["type"] == "error" and "session_id" not in error, error
    error_id = re.fullmatch(r"internal error \(id ([0-9a-f]{12})\)", error["detail"])
    assert error_id is not None, error
    logged = [r for r in caplog.records if error_id.group(1) in r.getMessage()]
    assert logged and logged[0].exc_info is not None
    assert "has_audio" in str(logged[0].exc_info[1])
