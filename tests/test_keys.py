"""API keys against a real ``redis-server``, and reading keys from request headers."""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from typing import TypeVar

import pytest
import redis
from redis_server import free_port, run

from ethostral_serve.api.auth import (
    CREATE_HINT,
    Access,
    Caller,
    Credentials,
    http_credentials,
    websocket_credentials,
)
from ethostral_serve.errors import (
    AuthenticationError,
    InvalidRequestError,
    StoreUnavailableError,
)
from ethostral_serve.keys import ApiKey, KeyLimits, KeyNotFoundError, KeyStore, hash_secret
from ethostral_serve.quotas import QuotaStore
from ethostral_serve.settings import AuthSettings, Settings

T = TypeVar("T")


@pytest.fixture
def prefix() -> str:
    """A key prefix no other test uses, so tests never see each other's keys."""
    return f"t-keys-{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def store(redis_url: str, prefix: str) -> KeyStore:
    return KeyStore(redis_url, prefix=prefix)


def everything_under(raw: redis.Redis, prefix: str) -> list[bytes]:
    """Every key under ``prefix`` and every byte string stored in it (strings, hashes)."""
    found: list[bytes] = []
    for key in raw.scan_iter(match=f"{prefix}*"):
        found.append(key)
        kind = raw.type(key)
        if kind == b"string":
            found.append(raw.get(key))
        elif kind == b"hash":
            for field, value in raw.hgetall(key).items():
                found += [field, value]
        else:
            pytest.fail(f"unexpected {kind!r} at {key!r}")
    return found


# --- KeyStore ------------------------------------------------------------------------


def test_create_returns_a_secret_that_is_never_stored(
    store: KeyStore, raw: redis.Redis, prefix: str
) -> None:
    limits = KeyLimits(max_concurrent_uploads=2, audio_hours_per_day=1.5)
    key, secret = run(store.create("  ci-runner  ", limits), store)

    assert secret.startswith("eth_") and len(secret) > 40
    assert key.name == "ci-runner"  # stripped
    assert key.id.startswith("key_") and len(key.id) == len("key_") + 12
    assert key.limits == limits
    assert secret not in key.model_dump_json()

    stored = everything_under(raw, prefix)
    # three Redis keys (the record, the id hash, the name hash), the record's JSON, and
    # each hash's field and value
    assert len(stored) == 8
    assert not [b for b in stored if secret.encode() in b]
    # ... nor any long piece of it, in case it were stored transformed (e.g. without 'eth_')
    assert not [b for b in stored if secret[4:20].encode() in b]
    digest = hashlib.sha256(secret.encode()).hexdigest()
    assert hash_secret(secret) == digest
    assert raw.hget(f"{prefix}apikeys", key.id) == digest.encode()
    assert ApiKey.model_validate_json(raw.get(f"{prefix}apikey:{digest}")) == key
    assert raw.hget(f"{prefix}apikey-names", "ci-runner") == key.id.encode()


def test_two_keys_get_different_secrets_and_ids(store: KeyStore) -> None:
    async def go() -> tuple[tuple[ApiKey, str], tuple[ApiKey, str]]:
        return await store.create("a"), await store.create("b")

    (a, secret_a), (b, secret_b) = run(go(), store)
    assert secret_a != secret_b
    assert a.id != b.id


def test_authenticate_knows_the_right_secret_only(store: KeyStore) -> None:
    async def go() -> list[ApiKey | None]:
        key, secret = await store.create("app")
        other, _ = await store.create("other")
        assert key != other
        return [
            await store.authenticate(secret),
            await store.authenticate(secret + "x"),
            await store.authenticate(secret[:-1]),
            await store.authenticate(secret.removeprefix("eth_")),
            await store.authenticate(hash_secret(secret)),  # the stored digest is no key
            await store.authenticate(""),
        ]

    right, *wrong = run(go(), store)
    assert right is not None and right.name == "app"
    assert wrong == [None] * 5


def test_authenticate_does_not_see_keys_under_another_prefix(redis_url: str) -> None:
    one = KeyStore(redis_url, prefix=f"t-keys-{uuid.uuid4().hex[:8]}:")
    two = KeyStore(redis_url, prefix=f"t-keys-{uuid.uuid4().hex[:8]}:")

    async def go() -> tuple[ApiKey | None, ApiKey | None]:
        _, secret = await one.create("app")
        return await one.authenticate(secret), await two.authenticate(secret)

    mine, theirs = run(go(), one, two)
    assert mine is not None
    assert theirs is None


def test_any_is_false_until_a_key_exists(store: KeyStore) -> None:
    async def go() -> list[bool]:
        before = await store.any()
        key, _ = await store.create("first")
        during = await store.any()
        await store.revoke(key.id)
        return [before, during, await store.any()]

    assert run(go(), store) == [False, True, False]


def test_names_are_unique(store: KeyStore) -> None:
    run(store.create("dup"), store)
    with pytest.raises(InvalidRequestError, match="'dup' exists") as info:
        run(store.create(" dup "), store)  # the same name once stripped
    assert info.value.status_code == 422
    assert [k.name for k in run(store.list(), store)] == ["dup"]
    run(store.create("Dup"), store)  # names are case-sensitive


@pytest.mark.parametrize("name", ["", "   ", "\t\n", "x" * 101])
def test_empty_or_long_names_are_refused(store: KeyStore, raw: redis.Redis, name: str) -> None:
    with pytest.raises(InvalidRequestError, match="1-100 characters") as info:
        run(store.create(name), store)
    assert info.value.status_code == 422
    assert not raw.exists(store._ids_key)


def test_a_name_of_100_characters_is_accepted(store: KeyStore) -> None:
    key, _ = run(store.create("x" * 100), store)
    assert key.name == "x" * 100


def test_list_is_oldest_first_without_secrets(
    store: KeyStore, raw: redis.Redis, prefix: str
) -> None:
    async def go() -> list[tuple[ApiKey, str]]:
        return [await store.create(name) for name in ("first", "second", "third")]

    made = run(go(), store)
    # created_at has whole seconds: make the order unambiguous behind the store's back
    for (key, secret), stamp in zip(
        made,
        ["2030-01-01T00:00:03+00:00", "2030-01-01T00:00:01+00:00", "2030-01-01T00:00:02+00:00"],
        strict=True,
    ):
        dated = key.model_copy(update={"created_at": stamp})
        raw.set(f"{prefix}apikey:{hash_secret(secret)}", dated.model_dump_json())

    listed = run(store.list(), store)
    assert [k.name for k in listed] == ["second", "third", "first"]
    assert all(isinstance(k, ApiKey) for k in listed)
    dumped = "".join(k.model_dump_json() for k in listed)
    assert not [s for _, s in made if s in dumped or s[4:20] in dumped]


def test_list_of_an_empty_prefix_is_empty(store: KeyStore) -> None:
    assert run(store.list(), store) == []


@pytest.mark.parametrize("by", ["id", "name"])
def test_revoked_key_stops_working_at_once(
    store: KeyStore, raw: redis.Redis, prefix: str, by: str
) -> None:
    async def go() -> tuple[ApiKey, ApiKey, ApiKey | None, ApiKey | None, list[ApiKey]]:
        key, secret = await store.create("doomed")
        _, kept_secret = await store.create("kept")
        assert await store.authenticate(secret) == key
        revoked = await store.revoke(key.id if by == "id" else "doomed")
        return (
            key,
            revoked,
            await store.authenticate(secret),
            await store.authenticate(kept_secret),
            await store.list(),
        )

    key, revoked, after, kept, listed = run(go(), store)
    assert revoked == key
    assert after is None
    assert kept is not None and kept.name == "kept"
    assert [k.name for k in listed] == ["kept"]
    assert raw.hlen(f"{prefix}apikeys") == 1
    assert len(list(raw.scan_iter(match=f"{prefix}apikey:*"))) == 1  # only kept's record


def test_revoking_an_unknown_key_is_not_found(store: KeyStore) -> None:
    run(store.create("exists"), store)
    for unknown in ("key_000000000000", "nobody", ""):
        with pytest.raises(KeyNotFoundError, match="no API key") as info:
            run(store.revoke(unknown), store)
        assert info.value.status_code == 404
    assert [k.name for k in run(store.list(), store)] == ["exists"]


def test_revoking_twice_is_not_found(store: KeyStore) -> None:
    key, _ = run(store.create("once"), store)
    run(store.revoke(key.id), store)
    with pytest.raises(KeyNotFoundError):
        run(store.revoke(key.id), store)


@pytest.mark.parametrize(
    "damage", [b"{not json", b'{"id": "key_x"}', b"\xff\xfe", b'{"id": 1, "name": [], "x": 2}']
)
def test_a_damaged_record_authenticates_nobody(
    store: KeyStore, raw: redis.Redis, prefix: str, damage: bytes
) -> None:
    key, secret = run(store.create("damaged"), store)
    record = f"{prefix}apikey:{hash_secret(secret)}"
    assert run(store.authenticate(secret), store) == key
    raw.set(record, damage)
    assert run(store.authenticate(secret), store) is None
    assert run(store.list(), store) == []  # nor is it listed
    assert raw.get(record) == damage  # left as it was


def test_redis_down_is_store_unavailable() -> None:
    store = KeyStore(f"redis://127.0.0.1:{free_port()}/0", timeout_s=1.0)
    calls = [
        store.create("x"),
        store.authenticate("eth_x"),
        store.any(),
        store.list(),
        store.revoke("x"),
        store.ping(),
    ]
    for call in calls:
        with pytest.raises(StoreUnavailableError) as info:
            run(call, store)
        assert info.value.status_code == 503


# --- credentials from headers ----------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "secret"),
    [
        ("Bearer eth_abc", "eth_abc"),
        ("bearer eth_abc", "eth_abc"),
        ("BEARER eth_abc", "eth_abc"),
        ("Token eth_abc", "eth_abc"),
        ("tOkEn eth_abc", "eth_abc"),
        ("  Bearer   eth_abc  ", "eth_abc"),
        ("Bearer", None),
        ("Bearer ", None),
        ("Bearer    ", None),
        ("", None),
        ("   ", None),
        ("eth_abc", None),
        ("Basic dXNlcjpwYXNz", None),
        ("Bearereth_abc", None),
        ("Key eth_abc", None),
        ("garbage \x00\xff", None),
    ],
)
def test_http_credentials(value: str, secret: str | None) -> None:
    assert http_credentials({"authorization": value}) == Credentials(secret)


def test_http_credentials_without_the_header() -> None:
    assert http_credentials({}) == Credentials(None)
    assert http_credentials({"x-api-key": "eth_abc"}) == Credentials(None)


@pytest.mark.parametrize(
    ("protocols", "expected"),
    [
        ("token, eth_abc", Credentials("eth_abc", "token")),
        ("bearer, eth_abc", Credentials("eth_abc", "bearer")),
        ("token,eth_abc", Credentials("eth_abc", "token")),
        ("  token ,  eth_abc  ", Credentials("eth_abc", "token")),
        ("Token, eth_abc", Credentials("eth_abc", "Token")),
        ("token, eth_abc, other", Credentials("eth_abc", "token")),
        ("token", Credentials(None)),
        ("token, ", Credentials(None)),
        ("eth_abc, token", Credentials(None)),
        ("graphql-ws, eth_abc", Credentials(None)),
        ("", Credentials(None)),
    ],
)
def test_websocket_credentials_from_subprotocols(protocols: str, expected: Credentials) -> None:
    assert websocket_credentials({"sec-websocket-protocol": protocols}) == expected


def test_websocket_credentials_from_the_header_win_over_subprotocols() -> None:
    headers = {"authorization": "Bearer eth_header", "sec-websocket-protocol": "token, eth_proto"}
    assert websocket_credentials(headers) == Credentials("eth_header", None)
    # an unusable header falls back to the subprotocols
    headers = {"authorization": "Basic xyz", "sec-websocket-protocol": "bearer, eth_proto"}
    assert websocket_credentials(headers) == Credentials("eth_proto", "bearer")
    assert websocket_credentials({}) == Credentials(None)


# --- Access --------------------------------------------------------------------------


def test_open_access_lets_everyone_in() -> None:
    access = Access()
    assert not access.required
    for credentials in (Credentials(None), Credentials("eth_anything")):
        caller = run(access.authenticate(credentials))
        assert caller == Caller(key=None)
        assert caller.owner is None


def test_access_needs_both_stores_or_none(redis_url: str) -> None:
    with pytest.raises(ValueError, match="together"):
        Access(keys=KeyStore(redis_url))
    with pytest.raises(ValueError, match="together"):
        Access(quotas=QuotaStore(redis_url))


def test_access_from_settings(redis_url: str) -> None:
    assert not Access.from_settings(redis_url, Settings()).required
    settings = Settings(auth=AuthSettings(required=True, key_prefix="p:", slot_lease_s=9.0))
    access = Access.from_settings(redis_url, settings)
    assert access.required
    assert access.keys is not None and access.quotas is not None
    assert access.keys.prefix == access.quotas.prefix == "p:"
    assert access.quotas.lease_s == 9.0
    assert access.keys.url == redis_url


def test_access_with_keys(redis_url: str, prefix: str) -> None:
    access = Access(KeyStore(redis_url, prefix=prefix), QuotaStore(redis_url, prefix=prefix))
    assert access.required
    assert access.keys is not None

    async def missing() -> Caller:
        return await access.authenticate(Credentials(None))

    with pytest.raises(AuthenticationError, match="missing API key") as info:
        run(missing(), access.keys)
    assert info.value.status_code == 401
    assert "ethostral keys create" in info.value.detail  # no key exists yet
    assert CREATE_HINT in info.value.detail

    key, secret = run(access.keys.create("app"), access.keys)
    with pytest.raises(AuthenticationError, match="missing API key") as info:
        run(missing(), access.keys)
    assert "ethostral keys create" not in info.value.detail  # a key exists now

    with pytest.raises(AuthenticationError, match="unknown or revoked") as info:
        run(access.authenticate(Credentials("eth_wrong")), access.keys)
    assert info.value.status_code == 401
    assert "ethostral keys create" not in info.value.detail

    caller = run(access.authenticate(Credentials(secret)), access.keys)
    assert caller == Caller(key)
    assert caller.owner == key.id

    run(access.keys.revoke(key.id), access.keys)
    with pytest.raises(AuthenticationError, match="unknown or revoked"):
        run(access.authenticate(Credentials(secret)), access.keys)


def test_a_name_like_a_key_id_is_refused(store: KeyStore) -> None:
    with pytest.raises(InvalidRequestError, match="key_"):
        run(store.create("key_0123456789ab"), store)


def test_two_creates_of_one_name_at_once_make_one_key(store: KeyStore) -> None:
    async def go() -> list[object]:
        return await asyncio.gather(
            *(store.create("same") for _ in range(5)), return_exceptions=True
        )

    results = run(go(), store)
    made = [r for r in results if not isinstance(r, BaseException)]
    assert len(made) == 1
    assert all(isinstance(r, InvalidRequestError) for r in results if r not in made)
    assert [k.name for k in run(store.list(), store)] == ["same"]


def test_a_revoked_name_can_be_used_again(store: KeyStore) -> None:
    async def go() -> tuple[ApiKey, ApiKey]:
        old, _ = await store.create("rotating")
        await store.revoke("rotating")
        new, _ = await store.create("rotating")
        return old, new

    old, new = run(go(), store)
    assert old.id != new.id
