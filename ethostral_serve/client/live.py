"""Live streams (``WS /transcribe/stream``): audio sources, typed events, close codes.

The asyncio side is :func:`stream_events`; the blocking client runs it on an event loop
of its own in a thread (:func:`iterate_blocking`). ``websockets`` is imported on first
use, so the HTTP calls of the client work without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import ssl
import sys
import threading
import wave
from array import array
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from pydantic import TypeAdapter

from ethostral_serve.client.protocol import ApiError, auth_headers, stream_params, websocket_url
from ethostral_serve.schema import ErrorEvent, SessionEvent, StreamEvent

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection

T = TypeVar("T")

AudioInput = (
    str | os.PathLike[str] | bytes | bytearray | memoryview | Iterable[bytes] | AsyncIterable[bytes]
)
"""What a stream sends: a 16-bit PCM WAV file's path, raw PCM bytes (cut into chunks
here), or an iterable / async iterable of raw PCM chunks (each sent as one frame)."""

SAMPLE_BYTES = {"pcm_s16le": 2, "pcm_f32le": 4}
DEFAULT_SAMPLE_RATE = 16000
CLOSE_MEANINGS = {
    1000: "normal close",
    1003: "a text message that is not start/stop JSON",
    1006: "the connection was lost without a close",
    1007: "invalid audio samples",
    1008: "refused by policy: bad parameters, idle or too long",
    1009: "a frame over the size limit",
    1011: "internal server error",
    1013: "try again later",
    4401: "missing, unknown or revoked API key",
    4429: "over a quota of the API key",
}
_EVENT = TypeAdapter[StreamEvent](StreamEvent)
_KNOWN = ("partial", "final", "session", "error")


class StreamError(Exception):
    """A stream that ended without its ``session`` event: the close code and reason, the
    ``detail`` of the server's error event (else the reason), and the id of the session
    stored before the close, if the server stored one."""

    def __init__(
        self, code: int, reason: str, detail: str | None = None, session_id: str | None = None
    ) -> None:
        self.code = code
        self.reason = reason
        self.detail = detail or reason or CLOSE_MEANINGS.get(code, "closed")
        self.session_id = session_id
        super().__init__(f"stream closed with {code} ({self.meaning}): {self.detail}")

    @property
    def meaning(self) -> str:
        """What the close code stands for, in words."""
        return CLOSE_MEANINGS.get(self.code, f"close code {self.code}")


@dataclass
class AudioSource:
    """The audio of one stream: its format and its chunks."""

    sample_rate: int
    encoding: str
    chunks: AsyncIterator[bytes]
    filename: str | None = None

    @property
    def bytes_per_second(self) -> int:
        """Bytes of this audio per second of sound."""
        return self.sample_rate * SAMPLE_BYTES[self.encoding]


def audio_source(
    audio: AudioInput, sample_rate: int | None, encoding: str, chunk_ms: int
) -> AudioSource:
    """Check ``audio`` and its format before anything connects (ValueError, TypeError,
    OSError for a file that cannot be read)."""
    if encoding not in SAMPLE_BYTES:
        raise ValueError(f"encoding must be one of {', '.join(SAMPLE_BYTES)}, not {encoding!r}")
    if chunk_ms <= 0:
        raise ValueError("chunk_ms must be positive")
    if isinstance(audio, str | os.PathLike):
        if encoding != "pcm_s16le":
            raise ValueError("a WAV file is sent as pcm_s16le")
        path = Path(audio)
        wav = _open_wav(path)
        rate = wav.getframerate()
        if sample_rate is not None and sample_rate != rate:
            wav.close()
            raise ValueError(f"{path} is sampled at {rate} Hz, not the {sample_rate} Hz asked")
        return AudioSource(rate, encoding, _in_thread(_wav_chunks(wav, chunk_ms)), path.name)
    rate = sample_rate or DEFAULT_SAMPLE_RATE
    if isinstance(audio, bytes | bytearray | memoryview):
        data = bytes(audio)
        step = max(1, rate * chunk_ms // 1000) * SAMPLE_BYTES[encoding]
        pieces = (data[i : i + step] for i in range(0, len(data), step))
        return AudioSource(rate, encoding, _aiter(pieces))
    if isinstance(audio, AsyncIterable):
        return AudioSource(rate, encoding, aiter(audio))
    if isinstance(audio, Iterable):
        return AudioSource(rate, encoding, _in_thread(iter(audio)))
    raise TypeError(
        "audio must be a WAV path, PCM bytes, or an iterable or async iterable of PCM chunks"
    )


@dataclass
class StreamTarget:
    """Where and how a stream connects."""

    url: str
    headers: dict[str, str]
    subprotocols: list[str] | None = None
    ssl_context: ssl.SSLContext | None = None
    open_timeout_s: float = 60.0


def plan_stream(
    base_url: str,
    api_key: str | None,
    verify: ssl.SSLContext | bool,
    timeout_s: float,
    audio: AudioInput,
    *,
    sample_rate: int | None,
    encoding: str,
    chunk_ms: int,
    key_in_subprotocol: bool,
    language: str | None,
    diarize: bool,
    emotion: bool,
    adapter: str | None,
    num_speakers: int | None,
    min_speakers: int | None,
    max_speakers: int | None,
    filename: str | None,
    store_audio: bool = False,
) -> tuple[AudioSource, StreamTarget]:
    """The audio and the connection of a stream, checked before anything connects."""
    source = audio_source(audio, sample_rate, encoding, chunk_ms)
    params = stream_params(
        sample_rate=source.sample_rate,
        encoding=source.encoding,
        language=language,
        diarize=diarize,
        emotion=emotion,
        adapter=adapter,
        num_speakers=num_speakers,
        min_speakers=min_speakers,
        max_speakers=max_speakers,
        filename=filename or source.filename,
        store_audio=store_audio,
    )
    target = StreamTarget(
        websocket_url(base_url, "/transcribe/stream", params),
        auth_headers(api_key),
        open_timeout_s=timeout_s,
    )
    if api_key and key_in_subprotocol:  # as browsers must: they cannot set headers
        target.headers, target.subprotocols = {}, ["token", api_key]
    if isinstance(verify, ssl.SSLContext):
        target.ssl_context = verify
    elif not verify:
        target.ssl_context = ssl.create_default_context()
        target.ssl_context.check_hostname = False
        target.ssl_context.verify_mode = ssl.CERT_NONE
    return source, target


async def stream_events(
    target: StreamTarget, source: AudioSource, *, realtime: bool = False, speed: float = 1.0
) -> AsyncIterator[StreamEvent]:
    """Send ``source`` to ``target``, then ``{"type": "stop"}``; yield each event,
    ending with the session event.

    ``realtime``: pace the chunks at ``speed`` times real time (else as fast as the
    socket takes them). A close without the session event raises :class:`StreamError`
    (after the error event, which is yielded too); a refused handshake raises
    :class:`~ethostral_serve.client.ApiError`; a server that cannot be reached, OSError.
    """
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed, InvalidStatus

    if speed <= 0:
        raise ValueError("speed must be positive")
    options: dict[str, Any] = {}
    if target.ssl_context is not None and target.url.startswith("wss:"):
        options["ssl"] = target.ssl_context
    try:
        ws = await connect(
            target.url,
            additional_headers=target.headers,
            subprotocols=target.subprotocols,  # type: ignore[arg-type]
            open_timeout=target.open_timeout_s,
            **options,
        )
    except InvalidStatus as exc:
        raise _refused(exc) from None
    async with ws:
        failed: list[Exception] = []  # the audio source's own error, once it raised
        sender = asyncio.create_task(_send(ws, source, realtime, speed, failed))
        error: ErrorEvent | None = None
        try:
            try:
                async for message in ws:
                    event = _event(message)
                    if event is None:
                        continue
                    if isinstance(event, ErrorEvent):
                        error = event
                    yield event
                    if isinstance(event, SessionEvent):
                        return
            except ConnectionClosed:
                pass  # said below, with the close code
            if failed:
                raise failed[0]  # the audio failed, so the client closed: not the server
            raise StreamError(
                ws.close_code or 1006,
                ws.close_reason or "",
                error.detail if error else None,
                error.session_id if error else None,
            )
        finally:
            sender.cancel()
            await asyncio.wait([sender])  # its end, without raising what it raised


async def _send(
    ws: ClientConnection,
    source: AudioSource,
    realtime: bool,
    speed: float,
    failed: list[Exception],
) -> None:
    """Every chunk, then stop. A failing source is noted in ``failed`` and closes the
    socket (the server stores what it had)."""
    from websockets.exceptions import ConnectionClosed

    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    try:
        async for chunk in source.chunks:
            if not chunk:
                continue
            if realtime:
                due = start + sent / source.bytes_per_second / speed
                if (wait := due - loop.time()) > 0:
                    await asyncio.sleep(wait)
            await ws.send(chunk)
            sent += len(chunk)
        await ws.send(json.dumps({"type": "stop"}))
    except ConnectionClosed:
        return  # the server ended the stream; the receiving side reports why
    except Exception as exc:
        failed.append(exc)
        await ws.close()
    finally:
        closer = getattr(source.chunks, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def _event(message: str | bytes) -> StreamEvent | None:
    if isinstance(message, bytes):
        return None
    data = json.loads(message)
    if not isinstance(data, dict) or data.get("type") not in _KNOWN:
        return None  # an event type newer than this client
    return _EVENT.validate_python(data)


def _refused(exc: Any) -> ApiError:
    """The HTTP answer that refused the WebSocket handshake, as an ApiError."""
    response = exc.response
    body = bytes(response.body or b"").decode(errors="replace")
    try:
        detail = json.loads(body).get("detail", body)
    except (ValueError, AttributeError):
        detail = body
    return ApiError(
        response.status_code, str(detail) or f"handshake refused with {response.status_code}"
    )


def _open_wav(path: Path) -> wave.Wave_read:
    try:
        wav = wave.open(str(path), "rb")  # noqa: SIM115  # closed by _wav_chunks
    except (wave.Error, EOFError) as exc:
        raise ValueError(
            f"{path}: not a PCM WAV file ({exc}); decode other formats to 16-bit PCM first "
            "(or use `ethostral stream`, which decodes any container)"
        ) from None
    if wav.getsampwidth() != 2:
        wav.close()
        raise ValueError(f"{path}: {8 * wav.getsampwidth()}-bit WAV; only 16-bit PCM is sent")
    return wav


def _wav_chunks(wav: wave.Wave_read, chunk_ms: int) -> Iterator[bytes]:
    """The WAV's frames as mono PCM16 chunks of ``chunk_ms`` (channels averaged)."""
    frames = max(1, wav.getframerate() * chunk_ms // 1000)
    channels = wav.getnchannels()
    try:
        while data := wav.readframes(frames):
            yield data if channels == 1 else _downmix(data, channels)
    finally:
        wav.close()


def _downmix(data: bytes, channels: int) -> bytes:
    samples = array("h")
    samples.frombytes(data[: len(data) - len(data) % (2 * channels)])
    if sys.byteorder == "big":
        samples.byteswap()
    planes = (samples[c::channels] for c in range(channels))
    mono = array("h", (sum(frame) // channels for frame in zip(*planes, strict=True)))
    if sys.byteorder == "big":
        mono.byteswap()
    return mono.tobytes()


async def _aiter(items: Iterable[bytes]) -> AsyncIterator[bytes]:
    for item in items:
        yield item


_DONE = object()


async def _in_thread(items: Iterator[bytes]) -> AsyncIterator[bytes]:
    """A blocking iterator's items, each read on a worker thread (a file, a microphone)."""
    try:
        while (item := await asyncio.to_thread(next, items, _DONE)) is not _DONE:
            yield item  # type: ignore[misc]
    finally:
        closer = getattr(items, "close", None)
        if closer is not None:
            with contextlib.suppress(Exception):  # still running on its thread
                closer()


def iterate_blocking(make: Callable[[], AsyncIterator[T]]) -> Iterator[T]:
    """The items of an async iterator, run on an event loop of its own in a thread; leaving
    the loop early (``break``, an exception) cancels it."""
    items: queue.Queue[tuple[str, Any]] = queue.Queue()
    loop = asyncio.new_event_loop()

    async def pump() -> None:
        source = make()
        try:
            async for item in source:
                items.put(("item", item))
        except Exception as exc:
            items.put(("error", exc))
        else:
            items.put(("end", None))
        finally:
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()

    task = loop.create_task(pump())

    def run() -> None:
        try:
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            loop.close()

    thread = threading.Thread(target=run, name="ethostral-stream", daemon=True)
    thread.start()
    try:
        while True:
            kind, value = items.get()
            if kind == "item":
                yield value
            elif kind == "error":
                raise value
            else:
                return
    finally:
        if thread.is_alive():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile
                loop.call_soon_threadsafe(task.cancel)
            thread.join()
