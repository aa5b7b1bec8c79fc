"""``WS /transcribe/stream``: live audio in, partial and final events out, session stored.

Protocol (also in the README and the OpenAPI description):

- Connect with query parameters ``sample_rate`` (default 16000), ``encoding``
  (``pcm_s16le`` default, or ``pcm_f32le``), ``language``, ``diarize``, ``emotion``; or
  send them first as a text message ``{"type": "start", ...}``.
- Send binary frames of raw mono PCM, any size; end with ``{"type": "stop"}``.
- Events (JSON text): ``partial`` while an utterance is spoken (same ``segment_id``,
  text may change; ``speaker`` provisional, ``emotion`` null), one ``final`` per
  utterance (stable speaker, emotion), then ``{"type": "session", "session_id"}`` after
  ``stop``, and a normal close. Errors: ``{"type": "error", "detail"}`` (with
  ``session_id`` when what was finalised was stored first) then a close.
  Events of neighbouring segments may interleave (a final can follow the next
  segment's first partials); match events on ``segment_id``.

Each connection runs two lanes: finals one after another in order, and drafts one at
a time for the newest audio only. A final never waits behind drafts, and drafts never
queue up: when drafting falls behind (long utterances, many streams on few cores),
partials come less often instead of later.

Finalised segments are never lost: the session is stored on ``stop``, on an abrupt
disconnect, and before any close for a limit. Before it is stored, a diarized stream's
audio is diarized as a whole and its segments re-speakered from their words
(:meth:`LiveStream.refine_speakers`): live labels come from one embedding per utterance,
which cannot tell apart voices that share an utterance.

This module is the transport: the socket, parameters, close codes, API keys and quotas,
and the threads model calls run on. The stream's own state (decoding, endpointing,
speakers, the Session) is :class:`~ethostral_serve.pipeline.live_stream.LiveStream`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketState

from ethostral_serve.api.auth import Access, Caller, websocket_credentials
from ethostral_serve.backends.stream import MAX_WINDOW_SAMPLES
from ethostral_serve.errors import (
    AuthenticationError,
    BackendUnavailableError,
    EthostralError,
    StoreUnavailableError,
)
from ethostral_serve.languages import requested_language
from ethostral_serve.metrics import NOOP, STREAM_GONE, Metrics, stream_outcome
from ethostral_serve.pipeline.live_stream import (
    LiveStream,
    StreamParams,
    coalesce,
)
from ethostral_serve.pipeline.ports import StreamBackends
from ethostral_serve.pipeline.streaming import (
    Due,
    take_window,
)
from ethostral_serve.quotas import QuotaExceededError
from ethostral_serve.settings import Settings

log = logging.getLogger("ethostral_serve.stream")

T = TypeVar("T")

CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED_DATA = 1003  # a text message that is not start/stop JSON
CLOSE_INVALID_DATA = 1007  # audio that is not valid samples (NaN, inf)
CLOSE_POLICY = 1008  # bad parameters, idle too long, stream too long
CLOSE_TOO_BIG = 1009  # a frame over the size limit
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # the session store or a model deployment is unavailable
CLOSE_UNAUTHORIZED = 4401  # missing, unknown or revoked API key
CLOSE_QUOTA = 4429  # over a quota of the API key
USAGE_EVERY_S = 10.0  # a stream's audio is counted against its key this often


class StreamCapacity:
    """How many streams this process serves at once, and the threads their calls use.

    Model calls block a thread each (in-process models, or waits on deployments); a
    stream holds at most three at once (a VAD step, a draft, a final), so the pool is
    sized for ``max_streams`` of them and never makes one stream wait for another's
    thread. Asyncio's default pool (cores + 4 threads) would. ``metrics`` hears the
    number of active streams and each stream's outcome and latencies.
    """

    def __init__(self, max_streams: int, metrics: Metrics | None = None) -> None:
        self.max_streams = max_streams
        self.metrics = metrics or NOOP
        self.active = 0
        self.pool = ThreadPoolExecutor(max_workers=3 * max_streams, thread_name_prefix="stream")

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[bool]:
        """Hold one of the ``max_streams`` places while the stream runs; False if full.

        The count changes before anything awaits, so no two streams take the last place.
        """
        if self.active >= self.max_streams:
            yield False
            return
        self.active += 1
        self.metrics.active_streams(self.active)
        try:
            yield True
        finally:
            self.active -= 1
            self.metrics.active_streams(self.active)

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a stream thread."""
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)


class StreamClosed(Exception):
    """The stream must end with this close code and reason (after an error event)."""

    def __init__(self, code: int, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


class StreamLanes:
    """One connection's model work: finals in order, drafts one at a time.

    ``submit`` hands over what the tracker says is due. Finals queue and run in order;
    those waiting together are recognised together.
    A partial replaces any draft still waiting, and is dropped once its utterance has a
    final queued, so a slow draft never delays a final nor sends stale text. Events go
    out one at a time. A failure in either lane is kept in ``error`` and reported
    through ``on_failure`` (the connection's loop then ends the stream).
    """

    def __init__(
        self,
        ws: WebSocket,
        live: LiveStream,
        capacity: StreamCapacity,
        on_failure: Callable[[], None],
    ) -> None:
        self._ws = ws
        self._live = live
        self._capacity = capacity
        self._on_failure = on_failure
        self._finals: deque[Due] = deque()
        self._finals_due = asyncio.Event()
        self._closing = False
        self._draft: Due | None = None
        self._draft_submitted = 0.0
        self._draft_arrived = 0.0  # when the audio that made the draft due arrived
        self._final_arrived: dict[int, float] = {}  # the same per queued final's utterance
        self._draft_due = asyncio.Event()
        self._closed_utterance = -1  # the newest utterance whose final is queued
        self._send_lock = asyncio.Lock()
        self.send = True
        self.error: Exception | None = None
        self._final_task = asyncio.create_task(self._run_finals())
        self._draft_task = asyncio.create_task(self._run_drafts())

    def submit(self, due: Sequence[Due], arrived: float | None = None) -> None:
        """Queue finals; make the newest partial the next draft. ``arrived``: when the
        audio that made them due arrived (loop time; default now), for their latency."""
        now = asyncio.get_running_loop().time()
        arrived = now if arrived is None else arrived
        for d in due:
            if d.kind == "final":
                self._closed_utterance = max(self._closed_utterance, d.utterance)
                self._finals.append(d)
                self._final_arrived.setdefault(d.utterance, arrived)
                self._finals_due.set()
            elif not self._stale(d):
                self._draft = d
                self._draft_submitted = now
                self._draft_arrived = arrived
                self._draft_due.set()

    async def drain(self, send: bool) -> None:
        """Stop drafting and run every queued final (sending the events when ``send``)."""
        self.send = send
        self._draft_task.cancel()
        self._closing = True
        self._finals_due.set()
        await self._final_task
        with contextlib.suppress(asyncio.CancelledError):
            await self._draft_task
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        """Drop all pending work (the stream ends without finishing it)."""
        self._draft_task.cancel()
        self._final_task.cancel()

    def _stale(self, due: Due) -> bool:
        return due.utterance <= self._closed_utterance

    async def _run_finals(self) -> None:
        try:
            while True:
                if not self._finals:
                    if self._closing:
                        return
                    await self._finals_due.wait()
                    self._finals_due.clear()
                    continue
                # Finals that queued up while the last ran share one ASR pass (up to
                # 30 s): under load, finals catch up instead of falling further behind.
                batch = take_window(self._finals, MAX_WINDOW_SAMPLES)
                for event in await self._capacity.call(self._live.final_events, batch):
                    await self._send(event)
                self._observe_finals(batch)
        except Exception as exc:
            self._fail(exc)

    async def _run_drafts(self) -> None:
        try:
            while True:
                await self._draft_due.wait()
                self._draft_due.clear()
                due, self._draft = self._draft, None
                if due is None or self._stale(due):
                    continue
                waited = asyncio.get_running_loop().time() - self._draft_submitted
                if waited > self._live.settings.stream.max_draft_wait_s:
                    continue  # it waited for the last draft: draft the next, fresher audio
                arrived = self._draft_arrived
                event = await self._capacity.call(self._live.partial_event, due)
                if not self._stale(due):
                    await self._send(event)
                    self._observe("partial", arrived)
        except Exception as exc:
            self._fail(exc)

    def _observe_finals(self, batch: Sequence[Due]) -> None:
        for d in batch:
            arrived = self._final_arrived.pop(d.utterance, None)
            if arrived is not None:
                self._observe("final", arrived)

    def _observe(self, event: Literal["partial", "final"], arrived: float) -> None:
        if self.send:  # events sent to a client; not those of a stream it left
            latency = asyncio.get_running_loop().time() - arrived
            self._capacity.metrics.stream_latency(event, latency)

    async def _send(self, event: dict[str, Any]) -> None:
        async with self._send_lock:
            if self.send and self._ws.application_state == WebSocketState.CONNECTED:
                with contextlib.suppress(Exception):  # the client may be gone mid-send
                    await self._ws.send_json(event)

    def _fail(self, exc: Exception) -> None:
        if self.error is None:
            self.error = exc
            self._on_failure()


LANE_FAILED = "ethostral.lane_failed"  # inbox message: a lane of this stream failed


@dataclass
class Connection:
    """An opened stream on this connection: its state, its lanes and their threads."""

    live: LiveStream
    lanes: StreamLanes
    capacity: StreamCapacity


class StreamUsage:
    """Counts a stream's audio against its key every ``USAGE_EVERY_S`` seconds."""

    def __init__(self, access: Access, caller: Caller) -> None:
        self.access = access
        self.caller = caller
        self.counted_s = 0.0

    async def update(self, duration_s: float, final: bool = False) -> None:
        """Count the audio since the last update; raises :class:`QuotaExceededError`
        once the key's daily hours are used up (not on the ``final`` count)."""
        new = duration_s - self.counted_s
        if new <= 0 or (new < USAGE_EVERY_S and not final):
            return
        try:
            await self.access.add_audio(self.caller, new)
        except StoreUnavailableError as exc:  # counted at the next update instead
            log.warning("stream audio not counted yet: %s", exc.detail)
            return
        self.counted_s = duration_s
        if not final:
            with contextlib.suppress(StoreUnavailableError):
                await self.access.check_audio(self.caller)


async def serve_stream(
    ws: WebSocket,
    backends: StreamBackends,
    store: Any,
    settings: Settings,
    capacity: StreamCapacity,
    access: Access | None = None,
) -> None:
    """Run one WebSocket stream to its end (see the module docstring)."""
    access = access or Access()
    credentials = websocket_credentials(ws.headers)
    subprotocol = credentials.subprotocol
    try:
        caller = await access.authenticate(credentials)
        async with access.slot(caller, "streams"):
            await access.check_audio(caller)
            await _serve_admitted(
                ws, backends, store, settings, capacity, access, caller, subprotocol
            )
    except AuthenticationError as exc:
        await _refuse(ws, subprotocol, CLOSE_UNAUTHORIZED, exc.detail)
    except QuotaExceededError as exc:
        await _refuse(
            ws, subprotocol, CLOSE_QUOTA, f"{exc.detail} (retry after {exc.retry_after_s} s)"
        )
    except EthostralError as exc:  # the key store is down
        await _refuse(ws, subprotocol, CLOSE_TRY_AGAIN, exc.detail)
    finally:
        # the code the server closed with; none: the client left without "stop"
        code = getattr(ws.state, "close_code", STREAM_GONE)
        capacity.metrics.request("stream", stream_outcome(code), code)


async def _refuse(ws: WebSocket, subprotocol: str | None, code: int, detail: str) -> None:
    """Accept (browsers see no reason on a refused handshake), send the error, close."""
    if ws.application_state == WebSocketState.CONNECTING:
        await ws.accept(subprotocol=subprotocol)
    await _close(ws, code, detail)


async def _serve_admitted(
    ws: WebSocket,
    backends: StreamBackends,
    store: Any,
    settings: Settings,
    capacity: StreamCapacity,
    access: Access,
    caller: Caller,
    subprotocol: str | None,
) -> None:
    usage = StreamUsage(access, caller)
    owner = caller.owner
    async with capacity.slot() as admitted:
        await ws.accept(subprotocol=subprotocol)
        if not admitted:
            await _close(
                ws,
                CLOSE_TRY_AGAIN,
                f"the server is at its limit of {capacity.max_streams} live streams; "
                "try again later",
            )
            return
        opened: list[Connection] = []  # the stream, once its first audio arrived
        inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        reader = asyncio.create_task(_read(ws, inbox))
        try:
            params = _params(dict(ws.query_params))
            live, stopped = await _run(
                ws, inbox, params, backends, settings, capacity, opened, usage
            )
            if stopped:
                session_id = await _store(live, store, owner, capacity.metrics)
                ws.state.close_code = CLOSE_NORMAL
                with contextlib.suppress(Exception):  # a client gone after stop: stored
                    await ws.send_json({"type": "session", "session_id": session_id})
                    await ws.close(CLOSE_NORMAL)
            else:  # the client went away: keep what was finalised
                await _store(live, store, owner, capacity.metrics)
        except StreamClosed as exc:
            stored, code, detail = None, exc.code, exc.detail
            if opened and exc.code != CLOSE_TRY_AGAIN:
                try:
                    stored = await _store(opened[0].live, store, owner, capacity.metrics)
                except StreamClosed:
                    pass  # the store is down: the close says why the stream ended
                except Exception as bug:  # storing failed unexpectedly: a bug, say so
                    code, detail = CLOSE_INTERNAL, _internal_error(bug)
            await _close(ws, code, detail, stored)
        except asyncio.CancelledError:
            # The server dropped the connection's task: finish and store regardless.
            if opened:
                await asyncio.shield(_finish_and_store(opened[0], store, owner, capacity.metrics))
            raise
        except BackendUnavailableError as exc:  # a model replica died or is overloaded
            stored = await _store_what_was_finalised(opened, store, owner, capacity.metrics)
            await _close(ws, CLOSE_TRY_AGAIN, exc.detail, stored)
        except Exception as exc:  # a bug: say so, keep what we have
            detail = _internal_error(exc)
            stored = await _store_what_was_finalised(opened, store, owner, capacity.metrics)
            await _close(ws, CLOSE_INTERNAL, detail, stored)
        finally:
            reader.cancel()
            if opened:
                opened[0].lanes.cancel()  # nothing is left running (a no-op once drained)
                with contextlib.suppress(EthostralError):
                    await asyncio.shield(usage.update(opened[0].live.duration_s, final=True))


def _internal_error(exc: BaseException) -> str:
    """Log an unexpected error under a new id; the close reason naming that id."""
    error_id = uuid.uuid4().hex[:12]
    log.error("stream error %s", error_id, exc_info=exc)
    return f"internal error (id {error_id})"


async def _store_what_was_finalised(
    opened: list[Connection], store: Any, owner: str | None, metrics: Metrics
) -> str | None:
    """After a failure: drop pending work, store the finalised segments; the session id."""
    if not opened:
        return None
    opened[0].lanes.cancel()
    with contextlib.suppress(Exception):
        return await _store(opened[0].live, store, owner, metrics)
    return None


async def _finish_and_store(
    conn: Connection, store: Any, owner: str | None, metrics: Metrics
) -> None:
    with contextlib.suppress(Exception):
        if not conn.live.finished:
            await _finish(conn, send=False)
        await _store(conn.live, store, owner, metrics)


async def _run(
    ws: WebSocket,
    inbox: asyncio.Queue[dict[str, Any]],
    params: StreamParams,
    backends: StreamBackends,
    settings: Settings,
    capacity: StreamCapacity,
    opened: list[Connection],
    usage: StreamUsage,
) -> tuple[LiveStream, bool]:
    """Process messages until ``stop`` (True) or a disconnect (False)."""
    limits = settings.stream
    started_audio = False
    while True:
        try:
            first = await asyncio.wait_for(inbox.get(), timeout=limits.idle_timeout_s)
        except TimeoutError:
            if opened:  # keep what was said before the silence
                await _finish(opened[0], send=True)
            raise StreamClosed(
                CLOSE_POLICY, f"idle too long: no message for {limits.idle_timeout_s:g} s"
            ) from None
        batch = [first]
        while not inbox.empty():
            batch.append(inbox.get_nowait())
        if opened and opened[0].lanes.error is not None:
            raise opened[0].lanes.error
        audio: list[bytes] = []
        stop = disconnected = False
        error: StreamClosed | None = None
        try:
            for message in batch:
                if message["type"] == LANE_FAILED:
                    continue  # seen above
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
            opened.append(await _open(ws, inbox, params, backends, settings, capacity))
        if not opened:
            if error is not None:
                raise error
            continue
        conn = opened[0]
        if audio:
            data, too_long = _within_limit(conn.live, settings, b"".join(audio))
            try:
                await _process(conn, data)
            except StreamClosed:  # invalid audio: what came before it is still finalised
                await _finish(conn, send=True)
                raise
            try:
                await usage.update(conn.live.duration_s)
            except QuotaExceededError as exc:
                await _finish(conn, send=True)
                raise StreamClosed(CLOSE_QUOTA, exc.detail) from None
            if too_long is not None:  # whatever else came with it (a stop too)
                await _finish(conn, send=True)
                raise StreamClosed(CLOSE_POLICY, too_long)
        if error is not None:
            await _finish(conn, send=True)
            raise error
        if stop or disconnected:
            await _finish(conn, send=not disconnected)
            return conn.live, stop
        longest_s, why = _longest_stream(settings, conn.live.params)
        if conn.live.duration_s > longest_s:
            await _finish(conn, send=True)
            raise StreamClosed(CLOSE_POLICY, f"stream too long: over {longest_s:g} s of audio{why}")


def _within_limit(live: LiveStream, settings: Settings, data: bytes) -> tuple[bytes, str | None]:
    """The part of new audio ``data`` within the stream's length limit, and why the rest
    was cut (None: nothing was), however the frames were batched."""
    longest_s, why = _longest_stream(settings, live.params)
    width = 2 if live.params.encoding == "pcm_s16le" else 4
    room = max(0, int((longest_s - live.duration_s) * live.params.sample_rate)) * width
    if len(data) <= room:
        return data, None
    return data[:room], f"stream too long: over {longest_s:g} s of audio{why}"


def _longest_stream(settings: Settings, params: StreamParams) -> tuple[float, str]:
    """How long a stream may run (audio seconds), and what says so when it is the most
    audio a session keeps (``store_audio``)."""
    longest_s = min(settings.stream.max_stream_s, settings.limits.max_duration_s)
    kept_s = settings.limits.max_stored_audio_s
    if params.store_audio and kept_s < longest_s:
        return kept_s, (
            ", the most a session keeps for playback (store_audio, "
            "ETHOSTRAL_LIMITS__MAX_STORED_AUDIO_S); what came before it is stored"
        )
    return longest_s, ""


async def _open(
    ws: WebSocket,
    inbox: asyncio.Queue[dict[str, Any]],
    params: StreamParams,
    backends: StreamBackends,
    settings: Settings,
    capacity: StreamCapacity,
) -> Connection:
    try:
        language = await capacity.call(backends.check_language, requested_language(params.language))
        adapter = await capacity.call(backends.check_adapter, params.adapter)
    except BackendUnavailableError:
        raise  # the model is down, not the parameters wrong: 1013
    except EthostralError as exc:
        raise StreamClosed(CLOSE_POLICY, exc.detail) from None
    params = params.model_copy(update={"language": language, "adapter": adapter})
    live = LiveStream(params, backends, settings, language=language)
    lanes = StreamLanes(ws, live, capacity, lambda: inbox.put_nowait({"type": LANE_FAILED}))
    return Connection(live, lanes, capacity)


async def _process(conn: Connection, data: bytes) -> None:
    """Decode and endpoint new audio; invalid samples end the stream (1007) after the
    valid audio before them is processed."""
    arrived = asyncio.get_running_loop().time()
    samples = conn.live.decode(data)
    if samples.size:
        conn.lanes.submit(await conn.capacity.call(conn.live.step, samples), arrived)
    if conn.live.bad_audio is not None:
        raise StreamClosed(CLOSE_INVALID_DATA, conn.live.bad_audio)


async def _finish(conn: Connection, send: bool) -> None:
    """Finalise the open utterance and run every queued final."""
    live = conn.live
    live.finished = True
    due = []
    if live.bad_audio is None:  # flush the resampler (after invalid audio: nothing more)
        tail = live.decode(b"", last=True)
        if tail.size:
            due = await conn.capacity.call(live.step, tail)
    conn.lanes.submit([d for d in coalesce(due + live.tracker.finish()) if d.kind == "final"])
    await conn.lanes.drain(send)
    await conn.capacity.call(live.refine_speakers)


async def _store(live: LiveStream, store: Any, owner: str | None, metrics: Metrics) -> str:
    """Save the stream's session; once it is saved, record its audio in ``metrics``."""
    session, audio = live.stored()  # together: has_audio says whether audio comes with it
    try:
        await store.save(session, owner=owner, audio=audio)
    except EthostralError as exc:
        raise StreamClosed(CLOSE_TRY_AGAIN, exc.detail) from None
    metrics.audio("stream", live.duration_s)
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


async def _close(ws: WebSocket, code: int, detail: str, session_id: str | None = None) -> None:
    """Send the error event (with the id of the session stored first, if any), close."""
    if ws.application_state != WebSocketState.CONNECTED:
        return
    ws.state.close_code = code  # the stream's outcome (metrics)
    event = {"type": "error", "detail": detail}
    if session_id is not None:
        event["session_id"] = session_id
    with contextlib.suppress(Exception):
        await ws.send_json(event)
        await ws.close(code, reason=detail.encode()[:120].decode(errors="ignore"))
