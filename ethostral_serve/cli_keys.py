"""``ethostral keys``: create, list and revoke API keys in the service's Redis."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import TYPE_CHECKING, Any

from ethostral_serve.errors import EthostralError

if TYPE_CHECKING:  # the command line's other commands need not import redis
    from ethostral_serve.keys import ApiKey, KeyLimits


def add_keys_parser(sub: Any) -> None:
    """Add ``keys create | list | revoke`` to the command line's sub-commands."""
    k = sub.add_parser(
        "keys",
        help="create, list and revoke API keys",
        description="API keys of a service run with auth.required. Keys live in the "
        "service's Redis (ETHOSTRAL_REDIS__URL, or the embedded one under the cache "
        "directory, started for the command if the service is not running); only a "
        "hash of each key is stored.",
    )
    k.add_argument("--redis-url", help="Redis of the service (default: the settings')")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    c = ksub.add_parser("create", help="create a key and print it once")
    c.add_argument("--name", required=True, help="a unique name, e.g. the client's")
    c.add_argument("--max-concurrent-uploads", type=int, help="uploads at once")
    c.add_argument("--max-concurrent-streams", type=int, help="live streams at once")
    c.add_argument("--audio-hours-per-day", type=float, help="hours of audio per UTC day")
    c.add_argument("--json", action="store_true", help="print the key and record as JSON")
    ls = ksub.add_parser("list", help="list keys (ids, names, limits; never the keys)")
    ls.add_argument("--json", action="store_true", help="one JSON object per line")
    r = ksub.add_parser("revoke", help="revoke a key by id or name; refused from its next request")
    r.add_argument("key", metavar="ID_OR_NAME")


def run_keys(args: argparse.Namespace) -> int:
    """Run one ``keys`` sub-command; 0 on success, 1 on an error, 2 on bad arguments."""
    from pydantic import ValidationError

    from ethostral_serve.keys import KeyLimits

    if args.keys_command == "create":
        try:
            limits = KeyLimits(
                max_concurrent_uploads=args.max_concurrent_uploads,
                max_concurrent_streams=args.max_concurrent_streams,
                audio_hours_per_day=args.audio_hours_per_day,
            )
        except ValidationError as exc:
            problems = "; ".join(f"{e['loc'][0]}: {e['msg']}" for e in exc.errors())
            print(f"ethostral keys: {problems}", file=sys.stderr)
            return 2
    else:
        limits = None
    try:
        return asyncio.run(_run(args, limits))
    except EthostralError as exc:
        print(f"ethostral keys: {exc.detail}", file=sys.stderr)
        return 1


async def _run(args: argparse.Namespace, limits: KeyLimits | None) -> int:
    from ethostral_serve.embedded_redis import resolve_redis_url
    from ethostral_serve.keys import KeyStore
    from ethostral_serve.settings import Settings

    settings = Settings()
    embedded = None
    if args.redis_url:
        url = args.redis_url
    else:
        url, embedded = resolve_redis_url(settings)
    store = KeyStore(url, prefix=settings.auth.key_prefix, timeout_s=settings.redis.timeout_s)
    try:
        if args.keys_command == "create":
            key, secret = await store.create(args.name, limits)
            if args.json:
                print(json.dumps({"key": secret, **key.model_dump()}))
            else:
                print(secret)
                print(
                    f"created {key.id} ({key.name}); {_limits(key)}. The key is shown only "
                    "now: keep it secret. Clients send `Authorization: Bearer <key>`.",
                    file=sys.stderr,
                )
        elif args.keys_command == "list":
            for key in await store.list():
                if args.json:
                    print(key.model_dump_json())
                else:
                    print(f"{key.id}\t{key.name}\t{key.created_at}\t{_limits(key)}")
        else:
            key = await store.revoke(args.key)
            print(f"revoked {key.id} ({key.name})", file=sys.stderr)
    finally:
        await store.aclose()
        if embedded is not None:
            embedded.stop()
    return 0


def _limits(key: ApiKey) -> str:
    lim = key.limits
    parts = [
        f"{lim.max_concurrent_uploads} uploads at once" if lim.max_concurrent_uploads else "",
        f"{lim.max_concurrent_streams} streams at once" if lim.max_concurrent_streams else "",
        f"{lim.audio_hours_per_day:g} h of audio a day" if lim.audio_hours_per_day else "",
    ]
    return ", ".join(p for p in parts if p) or "no limits"
