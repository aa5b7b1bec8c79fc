"""One stream's model work: finals in order and packed, drafts one at a time and never
stale. Fake backends (blocking on events) isolate the scheduling from the models."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
import pytest
from starlette.websockets import WebSocketState

from ethostral_serve.api.stream import StreamCapacity, StreamLanes
from ethostral_serve.pipeline.live_stream import LiveStream, StreamParams
from ethostral_serve.pipeline.streaming import Due
from ethostral_serve.pipeline.types import UtteranceResult, WordTiming
from ethostral_serve.settings import Settings


class _Socket:
    application_state = WebSocketState.CONNECTED

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    async def send_json(self, event: dict[str, Any]) -> None:
        self.sent.append(event)


class _Backends:
    """Drafts and finals that wait for the test to let them go."""

    def __init__(self) -> None:
        self.draft_gate = threading.Event()
        self.final_gate = threading.Event()
        self.drafted: list[float] = []  # end of each drafted audio, in seconds
        self.final_calls: list[int] = []  # utterances per finals() call
        self.fail_finals = False

    def new_vad_state(self) -> None:
        return None

    def vad_step(self, samples: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        return np.zeros(0), state

    def check_language(self, language: str | None) -> str | None:
        return language

    def check_adapter(self, adapter: str | None) -> str | None:
        return adapter

    def partial(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        self.drafted.append(len(audio) / 16000)
        assert self.draft_gate.wait(10)
        return f"draft of {len(audio)}", "en"

    def finals(
        self,
        utterances: list[np.ndarray],
        language: str | None,
        emotion: bool,
        adapter: str | None = None,
    ) -> list[UtteranceResult]:
        self.final_calls.append(len(utterances))
        assert self.final_gate.wait(10)
        if self.fail_finals:
            raise RuntimeError("model went away")
        return [
            UtteranceResult([WordTiming(f" {len(u)}", 0.0, 0.1, 0.9)], "en", None)
            for u in utterances
        ]

    def embed(self, audio: np.ndarray) -> None:
        return None


def _due(kind: str, utterance: int, seconds: float) -> Due:
    return Due(kind, utterance, 0.0, seconds, np.zeros(round(seconds * 16000), np.float32))


def _lanes(max_draft_wait_s: float = 5.0) -> tuple[StreamLanes, _Socket, _Backends, list[str]]:
    backends = _Backends()
    settings = Settings(stream={"max_draft_wait_s": max_draft_wait_s})
    live = LiveStream(StreamParams(emotion=False, diarize=False), backends, settings)
    socket = _Socket()
    failures: list[str] = []
    lanes = StreamLanes(socket, live, StreamCapacity(4), lambda: failures.append("failed"))  # type: ignore[arg-type]
    live.lanes = lanes
    return lanes, socket, backends, failures


async def _until(condition, timeout: float = 5.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached")


def test_a_slow_draft_never_delays_a_final_and_its_stale_partial_is_dropped() -> None:
    async def scenario() -> None:
        lanes, socket, backends, _ = _lanes()
        lanes.submit([_due("partial", 0, 1.0)])
        await _until(lambda: backends.drafted)  # the draft is running (and blocked)
        lanes.submit([_due("final", 0, 2.0)])
        backends.final_gate.set()
        await _until(lambda: socket.sent)
        assert [e["type"] for e in socket.sent] == ["final"]
        backends.draft_gate.set()  # the draft of utterance 0 ends after its final
        await lanes.drain(send=True)
        assert [e["type"] for e in socket.sent] == ["final"]

    asyncio.run(scenario())


def test_only_the_newest_waiting_partial_is_drafted() -> None:
    async def scenario() -> None:
        lanes, socket, backends, _ = _lanes()
        lanes.submit([_due("partial", 0, 1.0)])
        await _until(lambda: backends.drafted)
        lanes.submit([_due("partial", 0, 1.3)])
        lanes.submit([_due("partial", 0, 1.6)])
        backends.draft_gate.set()
        await _until(lambda: len(socket.sent) == 2)
        assert backends.drafted == [1.0, 1.6]  # 1.3 was replaced while it waited
        assert [e["end_ms"] for e in socket.sent] == [1000, 1600]
        backends.final_gate.set()
        await lanes.drain(send=True)

    asyncio.run(scenario())


def test_finals_that_wait_together_share_one_call_and_keep_their_order() -> None:
    async def scenario() -> None:
        lanes, socket, backends, _ = _lanes()
        lanes.submit([_due("final", 0, 2.0)])
        await _until(lambda: backends.final_calls)
        lanes.submit([_due("final", 1, 3.0), _due("final", 2, 4.0)])
        backends.final_gate.set()
        await lanes.drain(send=True)
        assert backends.final_calls == [1, 2]
        assert [e["text"] for e in socket.sent] == ["32000", "48000", "64000"]
        assert len({e["segment_id"] for e in socket.sent}) == 3

    asyncio.run(scenario())


def test_drain_without_sending_still_keeps_every_final() -> None:
    async def scenario() -> None:
        lanes, socket, backends, _ = _lanes()
        lanes.submit([_due("final", 0, 1.0), _due("final", 1, 1.0)])
        backends.final_gate.set()
        await lanes.drain(send=False)
        assert socket.sent == []
        assert len(lanes._live.segments) == 2

    asyncio.run(scenario())


def test_a_failing_final_is_reported_and_raised_by_drain() -> None:
    async def scenario() -> None:
        lanes, _, backends, failures = _lanes()
        backends.fail_finals = True
        backends.final_gate.set()
        lanes.submit([_due("final", 0, 1.0)])
        await _until(lambda: failures)
        assert isinstance(lanes.error, RuntimeError)
        with pytest.raises(RuntimeError, match="model went away"):
            await lanes.drain(send=True)

    asyncio.run(scenario())


def test_a_partial_that_waited_too_long_for_the_last_draft_is_skipped() -> None:
    async def scenario() -> None:
        wait = 0.05
        lanes, socket, backends, _ = _lanes(max_draft_wait_s=wait)
        lanes.submit([_due("partial", 0, 1.0)])
        await _until(lambda: backends.drafted)
        lanes.submit([_due("partial", 0, 1.3)])
        await asyncio.sleep(wait + 0.1)  # the draft running holds it up too long
        backends.draft_gate.set()
        await _until(lambda: len(socket.sent) == 1)
        await asyncio.sleep(0.05)
        assert backends.drafted == [1.0]  # 1.3 s is old news now
        lanes.submit([_due("partial", 0, 1.6)])  # the next one comes fresh
        await _until(lambda: len(socket.sent) == 2)
        assert backends.drafted == [1.0, 1.6]
        backends.final_gate.set()
        await lanes.drain(send=True)

    asyncio.run(scenario())


def test_a_stream_is_one_session_however_often_it_is_stored() -> None:
    """Storing again after a failure replaces the session instead of adding another."""
    live = LiveStream(StreamParams(emotion=False, diarize=False), _Backends(), Settings())
    first, again = live.session(), live.session()
    assert first.id == again.id and first.created_at == again.created_at
    other = LiveStream(StreamParams(emotion=False, diarize=False), _Backends(), Settings())
    assert other.session().id != first.id


def test_invalid_samples_end_the_audio_after_the_valid_ones() -> None:
    import numpy as np

    live = LiveStream(StreamParams(encoding="pcm_f32le"), _Backends(), Settings())
    x = np.array([0.1, 0.2, np.inf, 0.3], dtype="<f4")
    assert list(live.decode(x.tobytes())) == pytest.approx([0.1, 0.2])
    assert live.bad_audio is not None and "NaN or inf" in live.bad_audio
    from ethostral_serve.pipeline.live_stream import InvalidStreamAudio

    with pytest.raises(InvalidStreamAudio):
        live.decode(np.zeros(4, "<f4").tobytes())  # nothing after it is taken
