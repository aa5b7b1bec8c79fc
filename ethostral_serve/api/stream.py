"""``WS /transcribe/stream``: live audio in, partial and final events out, session stored.

Protocol (also in the README and the OpenAPI description):

- Connect with query parameters ``sample_rate`` (default 16000), ``encoding``
  (``pcm_s16le`` default, or ``pcm_f32le``), ``language``, ``diarize``, ``emotion``; or
  send them first as a text message ``{"type": "start", ...}``.
- Send binary frames of raw mono PCM, any size; end with ``{"type": "stop"}``.
- Events (JSON text): ``partial`` while an utterance is spoken (same ``segment_id``,
  text may change; ``speaker`` provisional, ``emotion`` null), one ``final`` per
  utterance (stable speaker, emotion), then ``{"type": "session", "session_id"}`` after
  ``stop``, and a normal close. Errors: ``{"type": "error", "detail"}`` then a close.

Finalised segments are never lost: the session is stored on ``stop``, on an abrupt
disconnect, and before any close for a limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.websockets import WebSocket, WebSocketState

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.base import StreamBackends
from ethostral_serve.errors import EthostralError
from ethostral_serve.pipeline.compose import (
    UNDETERMINED_LANGUAGE,
    to_emotion,
    to_ms,
    to_word,
)
from ethostral_serve.pipeline.streaming import Due, OnlineSpeakers, StreamOptions, StreamTracker
from ethostral_serve.schema import Emotion, Segment, Session
from ethostral_serve.settings import Settings

log = logging.getLogger("ethostral_serve.stream")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003  # a text message that is not start/stop JSON
CLOSE_INVALID_DATA = 1007  # audio that is not valid samples (NaN, inf)
CLOSE_POLICY = 1008  # bad parameters, idle too long, stream too long
CLOSE_TOO_BIG = 1009  # a frame over the size limit
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # the session store is unavailable


class StreamParams(BaseModel):
    """Per-stream options, from the query string or a first ``start`` message."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(16000, ge=8000, le=192000)
    encoding: Literal["pcm_s16le", "pcm_f32le"] = "pcm_s16le"
    language: str | None = None
    diarize: bool = True
    emotion: bool = True
    filename: str = Field("stream", min_length=1, max_length=255)


class StreamClosed(Exception):
    """The stream must end with this close code and reason (after an error event)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass
class LiveStream:
    """One connection's state: decoding, endpointing, speakers and finished segments."""

    params: StreamParams
    backends: StreamBackends
    settings: Settings
    language: str | None = None
    tracker: StreamTracker = field(init=False)
    speakers: OnlineSpeakers = field(init=False)
    segments: list[Segment] = field(default_factory=list)
    _vad_state: Any = None
    _rest: bytes = b""
    _resampler: Any = None
    _segment_ids: dict[int, str] = field(default_factory=dict)
    _last_speaker: str = "s0"
    finished: bool = False

    def __post_init__(self) -> None:
        s = self.settings.stream
        self.tracker = StreamTracker(
            StreamOptions(
                threshold=s.threshold,
                end_threshold=min(s.end_threshold, s.threshold),
                end_silence_s=s.end_silence_s,
                max_utterance_s=s.max_utterance_s,
                partial_every_s=s.partial_every_s,
            )
        )
        self.speakers = OnlineSpeakers(threshold=s.speaker_threshold)
        self._vad_state = self.backends.new_vad_state()
        if self.params.sample_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(
                self.params.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )

    @property
    def duration_s(self) -> float:
        """Audio received so far, in seconds at 16 kHz."""
        return self.tracker.total_samples / SAMPLE_RATE

    def decode(self, data: bytes, last: bool = False) -> np.ndarray:
        """Raw PCM bytes (any split) → 16 kHz float32 samples."""
        width = 2 if self.params.encoding == "pcm_s16le" else 4
        data = self._rest + data
        usable = len(data) - len(data) % width
        self._rest = data[usable:]
        if self.params.encoding == "pcm_s16le":
            x = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        else:
            x = np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
            if not np.all(np.isfinite(x)):
                raise StreamClosed(CLOSE_INVALID_DATA, "pcm_f32le audio holds NaN or inf")
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        return np.asarray(x, dtype=np.float32)

    def step(self, samples: np.ndarray) -> list[Due]:
        """Run the VAD over new samples; what is due (partials coalesced to the newest)."""
        probs, self._vad_state = self.backends.vad_step(samples, self._vad_state)
        return coalesce(self.tracker.push(samples, probs))

    def segment_id(self, utterance: int) -> str:
        """The stable id of an utterance's segment."""
        return self._segment_ids.setdefault(utterance, str(uuid.uuid4()))

    def partial_event(self, due: Due) -> dict[str, Any]:
        """Draft the open utterance (blocking)."""
        # A draft's detected language is not kept: a fraction of a second is too little
        # to tell; the first final decides the stream's language.
        text, _ = self.backends.partial(due.audio, self.language)
        return self._event("partial", due, text, self._last_speaker, None)

    def final_event(self, due: Due) -> dict[str, Any]:
        """Recognise a finished utterance, give it a speaker, keep it (blocking)."""
        result = self.backends.final(due.audio, self.language, self.params.emotion)
        if self.language is None and result.words:
            self.language = result.language
        speaker = "s0"
        if self.params.diarize:
            speaker = self.speakers.assign(self.backends.embed(due.audio))
        self._last_speaker = speaker
        emotion = to_emotion(result.emotion)
        event = self._event("final", due, result.text, speaker, emotion)
        if result.text:
            self.segments.append(
                Segment(
                    id=event["segment_id"],
                    speaker=speaker,
                    start_ms=event["start_ms"],
                    end_ms=event["end_ms"],
                    text=result.text,
                    emotion=emotion,
                    words=[to_word(w, due.start) for w in result.words],
                )
            )
        return event

    def session(self) -> Session:
        """Everything finalised so far, as a Session."""
        return Session(
            filename=self.params.filename,
            language=self.language or self.params.language or UNDETERMINED_LANGUAGE,
            duration_ms=to_ms(self.duration_s),
            segments=list(self.segments),
        )

    def _event(
        self, kind: str, due: Due, text: str, speaker: str, emotion: Emotion | None
    ) -> dict[str, Any]:
        return {
            "type": kind,
            "segment_id": self.segment_id(due.utterance),
            "speaker": speaker,
            "text": text,
            "start_ms": to_ms(due.start),
            "end_ms": max(to_ms(due.end), to_ms(due.start)),
            "emotion": emotion.model_dump() if emotion is not None else None,
        }


def coalesce(due: list[Due]) -> list[Due]:
    """Drop partials made stale by a later partial or a final of the same utterance."""
    out = []
    for i, d in enumerate(due):
        if d.kind == "partial" and any(later.utterance == d.utterance for later in due[i + 1 :]):
            continue
        out.append(d)
    return out


async def serve_stream(
    ws: WebSocket, backends: StreamBackends, store: Any, settings: Settings
) -> None:
    """Run one WebSocket stream to its end (see the module docstring)."""
    await ws.accept()
    opened: list[LiveStream] = []  # the stream, once its first audio arrived
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    reader = asyncio.create_task(_read(ws, inbox))
    try:
        params = _params(dict(ws.query_params))
        live, stopped = await _run(ws, inbox, params, backends, settings, opened)
        if stopped:
            session_id = await _store(live, store)
            await ws.send_json({"type": "session", "session_id": session_id})
            await ws.close(CLOSE_NORMAL)
        else:  # the client went away: keep what was finalised
            await _store(live, store)
    except StreamClosed as exc:
        if opened and exc.code != CLOSE_TRY_AGAIN:
            with contextlib.suppress(StreamClosed):
                await _store(opened[0], store)
        await _close(ws, exc.code, exc.detail)
    except asyncio.CancelledError:
        # The server dropped the connection's task: finish and store regardless.
        if opened:
            await asyncio.shield(_finish_and_store(ws, opened[0], store))
        raise
    except Exception as exc:  # a bug: say so without details, keep what we have
        error_id = uuid.uuid4().hex[:12]
        log.error("stream error %s", error_id, exc_info=exc)
        if opened:
            with contextlib.suppress(Exception):
                await _store(opened[0], store)
        await _close(ws, CLOSE_INTERNAL, f"internal error (id {error_id})")
    finally:
        reader.cancel()


async def _finish_and_store(ws: WebSocket, live: LiveStream, store: Any) -> None:
    with contextlib.suppress(Exception):
        if not live.finished:
            await _finish(ws, live, send=False)
        await _store(live, store)


async def _run(
    ws: WebSocket,
    inbox: asyncio.Queue[dict[str, Any]],
    params: StreamParams,
    backends: StreamBackends,
    settings: Settings,
    opened: list[LiveStream],
) -> tuple[LiveStream, bool]:
    """Process messages until ``stop`` (True) or a disconnect (False)."""
    limits = settings.stream
    started_audio = False
    while True:
        try:
            first = await asyncio.wait_for(inbox.get(), timeout=limits.idle_timeout_s)
        except TimeoutError:
            raise StreamClosed(
                CLOSE_POLICY, f"idle too long: no message for {limits.idle_timeout_s:g} s"
            ) from None
        batch = [first]
        while not inbox.empty():
            batch.append(inbox.get_nowait())
        audio: list[bytes] = []
        stop = disconnected = False
        error: StreamClosed | None = None
        try:
            for message in batch:
                if message["type"] == "websocket.disconnect":
                    disconnected = True
                    break
                if message.get("bytes") is not None:
                    data = message["bytes"]
                    if len(data) > limits.max_frame_bytes:
                        raise StreamClosed(
                            CLOSE_TOO_BIG,
                            f"frame of {len(data)} bytes is over the "
                            f"{limits.max_frame_bytes} byte limit",
                        )
                    audio.append(data)
                    started_audio = True
                    continue
                command = _command(message.get("text") or "")
                if command.get("type") == "start":
                    if started_audio or opened:
                        raise StreamClosed(CLOSE_POLICY, "'start' must come before any audio")
                    options = {k: v for k, v in command.items() if k != "type"}
                    params = _params({**params.model_dump(exclude_unset=True), **options})
                elif command.get("type") == "stop":
                    stop = True
                    break
                else:
                    raise StreamClosed(
                        CLOSE_UNSUPPORTED_DATA,
                        f"unknown message type {command.get('type')!r}; send 'start' or 'stop'",
                    )
        except StreamClosed as exc:
            error = exc  # the audio that came before the bad message still counts
        if not opened and (audio or stop or disconnected):
            opened.append(await _open(params, backends, settings))
        if not opened:
            if error is not None:
                raise error
            continue
        live = opened[0]
        if audio:
            await _process(ws, live, b"".join(audio), last=False)
        if error is not None:
            await _finish(ws, live, send=True)
            raise error
        if stop or disconnected:
            await _finish(ws, live, send=not disconnected)
            return live, stop
        if live.duration_s > min(limits.max_stream_s, settings.limits.max_duration_s):
            await _finish(ws, live, send=True)
            raise StreamClosed(
                CLOSE_POLICY, f"stream too long: over {limits.max_stream_s:g} s of audio"
            )


async def _open(params: StreamParams, backends: StreamBackends, settings: Settings) -> LiveStream:
    try:
        language = await asyncio.to_thread(backends.check_language, params.language)
    except EthostralError as exc:
        raise StreamClosed(CLOSE_POLICY, exc.detail) from None
    params = params.model_copy(update={"language": language})
    return LiveStream(params, backends, settings, language=language)


async def _process(ws: WebSocket, live: LiveStream, data: bytes, last: bool) -> None:
    samples = live.decode(data, last=last)
    due = await asyncio.to_thread(live.step, samples) if samples.size or last else []
    await _emit(ws, live, due, send=True)


async def _finish(ws: WebSocket, live: LiveStream, send: bool) -> None:
    live.finished = True
    tail = live.decode(b"", last=True)
    due = await asyncio.to_thread(live.step, tail) if tail.size else []
    due = coalesce(due + live.tracker.finish())
    await _emit(ws, live, [d for d in due if d.kind == "final"], send=send)


async def _emit(ws: WebSocket, live: LiveStream, due: list[Due], send: bool) -> None:
    for d in due:
        maker = live.final_event if d.kind == "final" else live.partial_event
        event = await asyncio.to_thread(maker, d)
        if send and ws.application_state == WebSocketState.CONNECTED:
            with contextlib.suppress(Exception):  # the client may be gone mid-send
                await ws.send_json(event)


async def _store(live: LiveStream, store: Any) -> str:
    session = live.session()
    try:
        await store.save(session)
    except EthostralError as exc:
        raise StreamClosed(CLOSE_TRY_AGAIN, exc.detail) from None
    return session.id


async def _read(ws: WebSocket, inbox: asyncio.Queue[dict[str, Any]]) -> None:
    """Move every message into the inbox, so processing can take several at once."""
    while True:
        message = await ws.receive()
        await inbox.put(message)
        if message["type"] == "websocket.disconnect":
            return


def _params(raw: dict[str, Any]) -> StreamParams:
    try:
        return StreamParams.model_validate(raw)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'parameters'}: {e['msg']}"
            for e in exc.errors()
        )
        raise StreamClosed(CLOSE_POLICY, f"bad stream parameters: {problems}") from None


def _command(text: str) -> dict[str, Any]:
    try:
        command = json.loads(text)
    except ValueError:
        command = None
    if not isinstance(command, dict):
        raise StreamClosed(
            CLOSE_UNSUPPORTED_DATA,
            'text messages must be JSON objects: {"type": "start" | "stop", ...}',
        )
    return command


async def _close(ws: WebSocket, code: int, detail: str) -> None:
    if ws.application_state != WebSocketState.CONNECTED:
        return
    with contextlib.suppress(Exception):
        await ws.send_json({"type": "error", "detail": detail})
        await ws.close(code, reason=detail.encode()[:120].decode(errors="ignore"))
