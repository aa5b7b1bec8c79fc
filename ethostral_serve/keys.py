"""API keys in Redis: only a key's SHA-256 is stored, never the key itself.

Layout under ``prefix`` (``auth.key_prefix``, default ``ethostral:``):

- ``apikey:<sha256>``: the key's record (:class:`ApiKey` JSON), looked up per request;
- ``apikeys``: a hash from key id to SHA-256, for listing and revoking by id or name;
- ``apikey-names``: a hash from name to key id, which keeps names unique.

Revoking deletes all three in one transaction, so the next request with that key is refused.
"""

from __future__ import annotations

import contextlib
import hashlib
import secrets
import uuid
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ethostral_serve.errors import EthostralError, InvalidRequestError
from ethostral_serve.redis_store import RedisStore

SECRET_PREFIX = "eth_"
ID_PREFIX = "key_"


class KeyLimits(BaseModel):
    """What one key may use at once and per UTC day; None: no limit."""

    model_config = ConfigDict(extra="forbid")

    max_concurrent_uploads: int | None = Field(None, ge=1, description="uploads at once")
    max_concurrent_streams: int | None = Field(None, ge=1, description="live streams at once")
    audio_hours_per_day: float | None = Field(
        None, gt=0.0, description="hours of audio per UTC day, uploads and streams together"
    )


class ApiKey(BaseModel):
    """A key's public record: everything but the secret."""

    id: str = Field(description="public id, e.g. 'key_3f9a0c2b1d4e'")
    name: str
    created_at: str
    limits: KeyLimits = KeyLimits()


class KeyNotFoundError(EthostralError):
    """No key has this id or name."""

    status_code = 404


def hash_secret(secret: str) -> str:
    """The SHA-256 (hex) a key is stored under."""
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore(RedisStore):
    """Create, look up, list and revoke API keys."""

    def __init__(self, url: str, prefix: str = "ethostral:", timeout_s: float = 2.0) -> None:
        super().__init__(url, timeout_s)
        self.prefix = prefix

    def _record_key(self, digest: str) -> str:
        return f"{self.prefix}apikey:{digest}"

    @property
    def _ids_key(self) -> str:
        return f"{self.prefix}apikeys"

    @property
    def _names_key(self) -> str:
        return f"{self.prefix}apikey-names"

    async def create(self, name: str, limits: KeyLimits | None = None) -> tuple[ApiKey, str]:
        """A new key: its record and the secret, which is shown once and never stored."""
        name = name.strip()
        if not name or len(name) > 100:
            raise InvalidRequestError("a key's name must be 1-100 characters")
        if name.startswith(ID_PREFIX):
            raise InvalidRequestError(f"a key's name may not start with {ID_PREFIX!r} (ids do)")
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=ID_PREFIX + uuid.uuid4().hex[:12],
            name=name,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            limits=limits or KeyLimits(),
        )
        client = self._client()
        # Claiming the name first makes two creates of one name race safely.
        if not await self._call(client.hsetnx(self._names_key, name, key.id)):
            raise InvalidRequestError(f"a key named {name!r} exists; names are unique")
        digest = hash_secret(secret)
        tx = client.pipeline(transaction=True)
        tx.set(self._record_key(digest), key.model_dump_json())
        tx.hset(self._ids_key, key.id, digest)
        try:
            await self._call(tx.execute())
        except EthostralError:
            with contextlib.suppress(EthostralError):
                await self._call(client.hdel(self._names_key, name))
            raise
        return key, secret

    async def authenticate(self, secret: str) -> ApiKey | None:
        """The key whose secret this is; None when unknown or revoked."""
        raw = await self._call(self._client().get(self._record_key(hash_secret(secret))))
        if raw is None:
            return None
        try:
            return ApiKey.model_validate_json(raw)
        except ValidationError:
            return None  # a damaged record authenticates nobody

    async def get(self, key_id: str) -> ApiKey | None:
        """The key with this id as it is now; None when revoked or unknown."""
        client = self._client()
        digest = await self._call(client.hget(self._ids_key, key_id))
        if digest is None:
            return None
        raw = await self._call(client.get(self._record_key(digest.decode())))
        if raw is None:
            return None
        try:
            return ApiKey.model_validate_json(raw)
        except ValidationError:
            return None

    async def any(self) -> bool:
        """Whether at least one key exists."""
        return bool(await self._call(self._client().hlen(self._ids_key)))

    async def list(self) -> list[ApiKey]:
        """Every key, oldest first."""
        client = self._client()
        digests = await self._call(client.hgetall(self._ids_key))
        if not digests:
            return []
        raws = await self._call(
            client.mget([self._record_key(d.decode()) for d in digests.values()])
        )
        keys = []
        for raw in raws:
            if raw is None:
                continue
            try:
                keys.append(ApiKey.model_validate_json(raw))
            except ValidationError:
                continue
        return sorted(keys, key=lambda k: (k.created_at, k.id))

    async def revoke(self, id_or_name: str) -> ApiKey:
        """Delete a key by id or (unique) name; its next request is refused."""
        matches = [k for k in await self.list() if id_or_name in (k.id, k.name)]
        if not matches:
            raise KeyNotFoundError(f"no API key with id or name {id_or_name!r}")
        key = matches[0]
        client = self._client()
        digest = await self._call(client.hget(self._ids_key, key.id))
        tx = client.pipeline(transaction=True)
        if digest is not None:
            tx.delete(self._record_key(digest.decode()))
        tx.hdel(self._ids_key, key.id)
        tx.hdel(self._names_key, key.name)
        await self._call(tx.execute())
        return key
