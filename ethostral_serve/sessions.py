"""Stored sessions: :class:`SessionStore` keeps ``Session`` JSON in Redis (``redis.asyncio``).

Every failure to reach Redis becomes :class:`~ethostral_serve.errors.StoreUnavailableError`
(503); an unknown id is :class:`~ethostral_serve.errors.SessionNotFoundError` (404); a stored
value that is not a session is :class:`CorruptSessionError` (500, left untouched in Redis).

Layout under ``key_prefix`` (default ``ethostral:session:``):

- ``<id>``: the session's JSON;
- ``<id>:owner``: the id of the API key that made it (absent: made while auth was off);
- ``<id>:audio``: its audio for playback (``store_audio``; :mod:`ethostral_serve.playback`),
  present exactly when the session's ``has_audio`` is true, with the session's expiry;
- ``index``: every session id, scored by creation time (ms), for listing;
- ``index:<key id>``: the same for one key's sessions.

A session, its audio and its index entries are written and removed in one ``MULTI``
transaction, so a session never points to missing audio and no audio outlives its session.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from datetime import datetime
from typing import TypeVar

from pydantic import ValidationError
from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from ethostral_serve.errors import (
    CorruptSessionError,
    InvalidRequestError,
    SessionNotFoundError,
    StoreUnavailableError,
)
from ethostral_serve.redis_store import RedisStore
from ethostral_serve.schema import Session

T = TypeVar("T")
log = logging.getLogger("ethostral_serve.sessions")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
# A `next_cursor` (creation score in ms, then the session id), or "" (the first page).
CURSOR_PATTERN = r"^(?:[0-9]+_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})?$"
_CURSOR = re.compile(CURSOR_PATTERN)
_TTL_SLACK_MS = 3_600_000  # a session may be stored up to an hour after it began
_INDEX_VERSION = "1"  # bump to re-run the backfill of sessions stored before the index


AUDIO_CHUNK_BYTES = 1 << 20  # kept audio is read from Redis this much at a time


class AudioNotKeptError(SessionNotFoundError):
    """The session exists but its audio was not kept (uploaded without ``store_audio``)."""


@dataclass(frozen=True)
class StoredAudio:
    """A session's kept audio as found: its size; read it with :meth:`SessionStore.read_audio`."""

    session_id: str
    size: int


@dataclass(frozen=True)
class SessionPage:
    """One page of a listing, newest first; ``next_cursor`` None on the last page."""

    sessions: list[Session]
    next_cursor: str | None


class SessionStore(RedisStore):
    """Sessions as JSON strings in Redis under ``key_prefix + id``, each with its owner.

    ``owner`` arguments are API key ids. ``get``, ``delete`` and ``list`` with an owner see
    only that key's sessions; with ``owner=None`` (auth off) they see every session.
    """

    what = "session store"

    def __init__(
        self,
        url: str,
        key_prefix: str = "ethostral:session:",
        ttl_s: int | None = None,
        timeout_s: float = 2.0,
    ) -> None:
        """``url``: ``redis://``, ``rediss://`` or ``unix://``; ``ttl_s``: expiry, None: never."""
        if ttl_s is not None and ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive or None, got {ttl_s}")
        super().__init__(url, timeout_s)
        self.key_prefix = key_prefix
        self.ttl_s = ttl_s
        self._indexed = False

    def key(self, session_id: str) -> str:
        """The Redis key a session is stored under."""
        return f"{self.key_prefix}{session_id}"

    def owner_key(self, session_id: str) -> str:
        """The Redis key holding the id of the API key that owns a session."""
        return f"{self.key_prefix}{session_id}:owner"

    def audio_key(self, session_id: str) -> str:
        """The Redis key holding a session's kept audio (``store_audio``)."""
        return f"{self.key_prefix}{session_id}:audio"

    def index_key(self, owner: str | None = None) -> str:
        """The sorted set listing every session (``owner`` None) or one key's sessions."""
        return f"{self.key_prefix}index" + (f":{owner}" if owner else "")

    async def save(
        self, session: Session, owner: str | None = None, audio: bytes | None = None
    ) -> None:
        """Store ``session`` under its id (replacing that id's earlier version and its
        audio), owned by the API key ``owner`` (None: no key), with ``audio`` for playback
        when given (then ``session.has_audio`` must be true, else false)."""
        tx = self._client().pipeline(transaction=True)
        self.add_save(tx, session, owner, audio)
        await self._call(tx.execute())

    def add_save(
        self,
        tx: Pipeline,
        session: Session,
        owner: str | None = None,
        audio: bytes | None = None,
    ) -> None:
        """Queue the writes of :meth:`save` on a ``MULTI`` pipeline (a job stores its
        session in the same transaction that marks it done)."""
        if session.has_audio != bool(audio):
            raise ValueError(
                f"session {session.id} has has_audio={session.has_audio} but "
                f"{'no' if not audio else len(audio)} bytes of audio were given"
            )
        score = _score(session)
        if self.ttl_s is not None:
            # Entries of sessions that have expired since (created more than ttl_s ago)
            # go first, so an index nobody lists does not grow forever.
            cutoff = time.time() * 1000 - self.ttl_s * 1000 - _TTL_SLACK_MS
            for index in {self.index_key(), self.index_key(owner)}:
                tx.zremrangebyscore(index, "-inf", f"({cutoff}")
        tx.set(self.key(session.id), session.model_dump_json(), ex=self.ttl_s)
        if audio:
            tx.set(self.audio_key(session.id), audio, ex=self.ttl_s)
        else:
            tx.delete(self.audio_key(session.id))
        if owner:
            tx.set(self.owner_key(session.id), owner, ex=self.ttl_s)
            tx.zadd(self.index_key(owner), {session.id: score})
        else:
            tx.delete(self.owner_key(session.id))
        tx.zadd(self.index_key(), {session.id: score})

    async def get(self, session_id: str, owner: str | None = None) -> Session:
        """The stored session with this id; raises ``SessionNotFoundError``, also when
        ``owner`` is given and the session is not that key's."""
        reads = self._client().pipeline(transaction=False)
        reads.get(self.key(session_id))  # GET, not MGET: a non-string value is an error
        reads.get(self.owner_key(session_id))
        raw, stored_owner = await self._call(reads.execute(), session_id)
        if raw is None or not _visible(stored_owner, owner):
            raise SessionNotFoundError(f"no session with id {session_id!r}")
        return _parse(raw, session_id)

    async def delete(self, session_id: str, owner: str | None = None) -> None:
        """Remove the session with this id and its index entries; raises
        ``SessionNotFoundError`` (also for another key's session)."""
        client = self._client()
        reads = client.pipeline(transaction=False)
        reads.exists(self.key(session_id))
        reads.get(self.owner_key(session_id))
        exists, stored_owner = await self._call(reads.execute(), session_id)
        if not exists or not _visible(stored_owner, owner):
            raise SessionNotFoundError(f"no session with id {session_id!r}")
        tx = client.pipeline(transaction=True)
        tx.delete(self.key(session_id), self.owner_key(session_id), self.audio_key(session_id))
        tx.zrem(self.index_key(), session_id)
        if stored_owner:
            tx.zrem(self.index_key(stored_owner.decode()), session_id)
        removed, *_ = await self._call(tx.execute())
        if not removed:
            raise SessionNotFoundError(f"no session with id {session_id!r}")

    async def audio(self, session_id: str, owner: str | None = None) -> StoredAudio:
        """The size of a session's kept audio; raises ``SessionNotFoundError`` (no such
        session, or another key's) or :class:`AudioNotKeptError`."""
        reads = self._client().pipeline(transaction=False)
        reads.exists(self.key(session_id))
        reads.get(self.owner_key(session_id))
        reads.strlen(self.audio_key(session_id))
        exists, stored_owner, size = await self._call(reads.execute(), session_id)
        if not exists or not _visible(stored_owner, owner):
            raise SessionNotFoundError(f"no session with id {session_id!r}")
        if not size:
            raise AudioNotKeptError(
                f"session {session_id!r} has no audio: it was not kept (send the upload "
                "or stream with store_audio=true to keep it)"
            )
        return StoredAudio(session_id, int(size))

    async def read_audio(self, audio: StoredAudio, start: int, end: int) -> AsyncIterator[bytes]:
        """Bytes ``start`` to ``end`` (inclusive) of the kept audio, a chunk at a time.

        Raises ``StoreUnavailableError``; stops short if the audio was deleted (or expired)
        since :meth:`audio` found it, as the session it belonged to is gone.
        """
        client = self._client()
        key = self.audio_key(audio.session_id)
        at = start
        while at <= end:
            last = min(end, at + AUDIO_CHUNK_BYTES - 1)
            chunk = await self._call(client.getrange(key, at, last))
            if not chunk:
                log.warning("the audio of session %s went while it was read", audio.session_id)
                return
            yield chunk
            at += len(chunk)

    async def list(
        self, owner: str | None = None, limit: int = 20, cursor: str | None = None
    ) -> SessionPage:
        """Sessions newest first, ``limit`` at a time; ``cursor`` is a previous page's
        ``next_cursor``. With ``owner``, only that key's sessions."""
        if limit < 1:
            raise ValueError(f"limit must be positive, got {limit}")
        await self._ensure_index()
        index = self.index_key(owner)
        client = self._client()
        after = _parse_cursor(cursor)
        found: list[tuple[Session, float]] = []
        while len(found) <= limit:
            ids = await self._page_ids(index, after, limit + 1 - len(found))
            if not ids:
                break
            raws = await self._call(client.mget([self.key(i) for i, _ in ids]))
            stale = [i for (i, _), raw in zip(ids, raws, strict=True) if raw is None]
            if stale:  # expired sessions (ttl_s) leave their index entries behind
                await self._call(client.zrem(index, *stale))
            for (session_id, score), raw in zip(ids, raws, strict=True):
                if raw is None:
                    continue
                try:
                    found.append((_parse(raw, session_id), score))
                except CorruptSessionError as exc:  # one bad record must not hide the rest
                    log.error("listing skips %s", exc.detail)
            after = ids[-1]
        more = len(found) > limit
        found = found[:limit]
        next_cursor = _cursor(found[-1][0].id, found[-1][1]) if more else None
        return SessionPage([s for s, _ in found], next_cursor)

    async def _page_ids(
        self, index: str, after: tuple[str, float] | None, count: int
    ) -> list[tuple[str, float]]:
        """Up to ``count`` (id, score) of ``index`` below ``after``, newest first."""
        client = self._client()
        if after is None:
            rows = await self._call(client.zrevrange(index, 0, count - 1, withscores=True))
            return [(m.decode(), s) for m, s in rows]
        last_id, last_score = after
        # Equal scores are ordered by id (descending in a reverse range): skip those
        # at the cursor's score whose id is not below the cursor's.
        ties = await self._call(client.zrangebyscore(index, last_score, last_score))
        skip = sum(1 for m in ties if m.decode() >= last_id)
        rows = await self._call(
            client.zrevrangebyscore(
                index, last_score, "-inf", start=skip, num=count, withscores=True
            )
        )
        return [(m.decode(), s) for m, s in rows]

    async def _ensure_index(self) -> None:
        """Index sessions stored before the index existed (once per Redis database)."""
        if self._indexed:
            return
        client = self._client()
        marker = f"{self.key_prefix}index-version"
        if await self._call(client.get(marker)) != _INDEX_VERSION.encode():
            scores = await self._call(self._scan_scores())
            if scores:
                await self._call(client.zadd(self.index_key(), scores, nx=True))
            await self._call(client.set(marker, _INDEX_VERSION))
        self._indexed = True

    async def _scan_scores(self) -> dict[str, float]:
        """Creation scores of every readable session under the prefix (others skipped)."""
        client = self._client()
        pattern = re.sub(r"([*?\[\]\\])", r"\\\1", self.key_prefix) + "*"
        scores: dict[str, float] = {}
        async for key in client.scan_iter(match=pattern, count=500):
            session_id = key.decode()[len(self.key_prefix) :]
            if not _UUID.fullmatch(session_id):
                continue
            try:
                raw = await client.get(key)
                if raw is not None:
                    scores[session_id] = _score(_parse(raw, session_id))
            except (ResponseError, CorruptSessionError) as exc:  # not a session: not listed
                log.error("the session index skips %s: %s", key.decode(), exc)
        return scores

    async def _call(self, op: Awaitable[T], session_id: str | None = None) -> T:
        """As :meth:`RedisStore._call`; a key of the wrong type is a corrupt session."""
        try:
            return await super()._call(op)
        except StoreUnavailableError as e:
            cause = e.__cause__
            if (
                session_id is not None
                and isinstance(cause, ResponseError)
                and "WRONGTYPE" in str(cause)
            ):
                raise CorruptSessionError(
                    f"stored session {session_id!r} is not a string value in Redis"
                ) from None
            raise


def _visible(stored_owner: bytes | None, owner: str | None) -> bool:
    """Whether a caller (``owner`` None: auth off, sees all) may see a stored session."""
    return owner is None or (stored_owner is not None and stored_owner.decode() == owner)


def _parse(raw: bytes, session_id: str) -> Session:
    try:
        session = Session.model_validate_json(raw)
    except ValidationError as e:
        raise CorruptSessionError(
            f"stored session {session_id!r} is not valid session JSON "
            f"({e.error_count()} error(s), first: {e.errors()[0]['msg']})"
        ) from None
    if session.id != session_id:
        raise CorruptSessionError(
            f"stored session {session_id!r} holds a session with id {session.id!r}"
        )
    return session


def _score(session: Session) -> float:
    """Milliseconds since the epoch of the session's creation (0 when unreadable)."""
    try:
        return float(int(datetime.fromisoformat(session.created_at).timestamp() * 1000))
    except ValueError:
        return 0.0


def _cursor(session_id: str, score: float) -> str:
    return f"{int(score)}_{session_id}"


def _parse_cursor(cursor: str | None) -> tuple[str, float] | None:
    if cursor is None or cursor == "":
        return None
    if not _CURSOR.fullmatch(cursor):
        raise InvalidRequestError(
            f"cursor {cursor!r} is not a cursor this server returned (use next_cursor)"
        )
    score, _, session_id = cursor.partition("_")
    return session_id, float(score)
