"""``GET``/``HEAD /sessions/{id}/audio``: a session's kept audio, with byte ranges.

Browsers' media elements seek with ``Range: bytes=...`` requests, so this answers 206
Partial Content for one satisfiable range (RFC 9110 §14), 200 with the whole file when
there is no Range (or one in another unit, several ranges, or an ``If-Range``: this
server gives no validators to match), and 416 with ``Content-Range: bytes */<size>`` for
a range it cannot satisfy or cannot parse. The bytes are read from Redis a chunk at a
time, only those asked for. HEAD answers the same status and headers without the body.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol

from fastapi.responses import JSONResponse, Response, StreamingResponse

from ethostral_serve.errors import SessionNotFoundError
from ethostral_serve.playback import EXTENSION, MEDIA_TYPE
from ethostral_serve.sessions import StoredAudio

CACHE_CONTROL = "private, max-age=3600"  # one user's audio; it never changes under its id
AUDIO_DESCRIPTION = """\
The audio of a session made with `store_audio=true`, as 16 kHz mono Ogg/Opus
(`audio/ogg`), on the session's timeline: an `<audio>` element can play it beside the
transcript. One `Range: bytes=...` gets 206 Partial Content (media elements seek this
way); an unsatisfiable or malformed range 416 with `Content-Range: bytes */<size>`;
several ranges, or any `If-Range`, the whole file (200). `HEAD` answers the same status
and headers without the body. 404 when the session does not exist (or belongs to another
API key), or when its audio was not kept (the `detail` says which)."""
_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")


class AudioStorage(Protocol):
    """Where kept audio is read from (:class:`~ethostral_serve.sessions.SessionStore`)."""

    async def audio(self, session_id: str, owner: str | None = None) -> StoredAudio:
        """The kept audio's size; raises ``SessionNotFoundError`` / ``AudioNotKeptError``."""
        ...

    def read_audio(self, audio: StoredAudio, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive), a chunk at a time."""
        ...


@dataclass(frozen=True)
class ByteRange:
    """Bytes ``start`` to ``end`` of a file, both inclusive."""

    start: int
    end: int

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start + 1


class RangeNotSatisfiable(Exception):
    """The request's Range cannot be served (416)."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def requested_range(header: str | None, size: int) -> ByteRange | None:
    """The one byte range to serve of a ``size``-byte file, or None for all of it.

    None also when the header names another unit or several ranges (a server may ignore
    Range). Raises :class:`RangeNotSatisfiable` for a malformed ``bytes`` range, or when
    no range asked for overlaps the file.
    """
    if header is None:
        return None
    unit, equals, spec = header.partition("=")
    if not equals or unit.strip().lower() != "bytes":
        return None
    specs = [s.strip() for s in spec.split(",") if s.strip()]
    if not specs:
        raise RangeNotSatisfiable(f"Range {header!r} names no byte range")
    ranges = [_one_range(s, size, header) for s in specs]
    satisfiable = [r for r in ranges if r is not None]
    if not satisfiable:
        raise RangeNotSatisfiable(
            f"Range {header!r} lies outside the audio, which is {size} bytes long"
        )
    return satisfiable[0] if len(specs) == 1 else None


def _one_range(spec: str, size: int, header: str) -> ByteRange | None:
    """One ``first-last``, ``first-`` or ``-suffix`` range clipped to the file; None when
    it does not overlap the file."""
    if m := _INT_RANGE.fullmatch(spec):
        first = int(m[1])
        if m[2] and int(m[2]) < first:
            raise RangeNotSatisfiable(f"Range {header!r}: {spec!r} ends before it starts")
        last = min(int(m[2]), size - 1) if m[2] else size - 1
        return ByteRange(first, last) if first < size else None
    if m := _SUFFIX_RANGE.fullmatch(spec):
        suffix = int(m[1])
        return ByteRange(max(0, size - suffix), size - 1) if suffix > 0 else None
    raise RangeNotSatisfiable(
        f"Range {header!r}: {spec!r} is not a byte range (bytes=FIRST-LAST, FIRST- or -SUFFIX)"
    )


async def audio_response(
    store: AudioStorage,
    session_id: str,
    owner: str | None,
    range_header: str | None,
    if_range: str | None,
    head: bool,
) -> Response:
    """The answer to ``GET`` (``head`` False) or ``HEAD`` of a session's audio."""
    audio = await store.audio(session_id, owner)
    headers = {
        "Accept-Ranges": "bytes",
        "Cache-Control": CACHE_CONTROL,
        "Content-Disposition": f'inline; filename="{session_id}.{EXTENSION}"',
    }
    try:
        # With If-Range the Range holds only if the client's validator matches ours; we
        # give none, so none matches: the whole file (RFC 9110 §13.1.5).
        wanted = None if if_range is not None else requested_range(range_header, audio.size)
    except RangeNotSatisfiable as exc:
        return JSONResponse(
            {"detail": exc.detail},
            status_code=416,
            headers={**headers, "Content-Range": f"bytes */{audio.size}"},
        )
    part = wanted or ByteRange(0, audio.size - 1)
    headers["Content-Length"] = str(part.length)
    status = 200
    if wanted is not None:
        status = 206
        headers["Content-Range"] = f"bytes {part.start}-{part.end}/{audio.size}"
    if head:
        return Response(status_code=status, headers=headers, media_type=MEDIA_TYPE)
    chunks = store.read_audio(audio, part.start, part.end)
    # The first chunk (all of a typical seek's range) is read before answering, so a
    # store that fails, or audio deleted meanwhile, is a 503 or 404, not a cut response.
    first = await anext(chunks, b"")
    if not first:
        raise SessionNotFoundError(f"no session with id {session_id!r}")
    return StreamingResponse(
        _prepend(first, chunks), status_code=status, headers=headers, media_type=MEDIA_TYPE
    )


async def _prepend(first: bytes, rest: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    yield first
    async for chunk in rest:
        yield chunk
