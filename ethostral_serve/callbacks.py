"""Job callbacks: a signed POST of the result to the URL a job was given.

Signing follows the common webhook scheme: the body is signed with HMAC-SHA256 over
``"<timestamp>.<body>"``, sent as

- ``X-Ethostral-Timestamp``: Unix seconds when the delivery was signed;
- ``X-Ethostral-Signature``: ``v1=<hex digest>``.

A receiver recomputes the digest with its secret (``GET /callbacks/secret``), compares
in constant time, and refuses timestamps older than a few minutes (:func:`verify` does
all three). Each API key has its own secret, derived from the server's, so no key can
sign for another.

Callback URLs whose host resolves to a private, loopback, link-local or otherwise
internal address are refused (they would let a caller reach the server's own network)
unless ``jobs.callback_allow`` names the host or a network holding the address.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import secrets
import socket
import time
from collections.abc import Mapping, Sequence
from urllib.parse import urlsplit

import httpx

from ethostral_serve.errors import InvalidRequestError

log = logging.getLogger("ethostral_serve.callbacks")

TIMESTAMP_HEADER = "X-Ethostral-Timestamp"
SIGNATURE_HEADER = "X-Ethostral-Signature"
JOB_HEADER = "X-Ethostral-Job"
TOLERANCE_S = 300
SECRET_PREFIX = "whsec_"

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


class UnresolvableHostError(InvalidRequestError):
    """A callback URL's host name does not resolve (now)."""


def new_master_secret() -> str:
    """A fresh server secret (the one the keys' secrets derive from)."""
    return secrets.token_hex(32)


def key_secret(master: str, owner: str | None) -> str:
    """The signing secret of one API key (``owner`` None: the server with auth off)."""
    digest = hmac.new(master.encode(), f"callback:{owner or ''}".encode(), hashlib.sha256)
    return SECRET_PREFIX + digest.hexdigest()


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``X-Ethostral-Signature`` value of ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether a delivery is genuine and fresh: what a receiver checks."""
    lowered = {k.lower(): v for k, v in headers.items()}
    raw_ts = lowered.get(TIMESTAMP_HEADER.lower(), "")
    signature = lowered.get(SIGNATURE_HEADER.lower(), "")
    try:
        timestamp = int(raw_ts)
    except ValueError:
        return False
    if abs((now if now is not None else time.time()) - timestamp) > tolerance_s:
        return False
    return hmac.compare_digest(
        sign(secret, timestamp, body).encode(), signature.encode(errors="replace")
    )


def _allowed(host: str, address: IpAddress | None, allow: Sequence[str]) -> bool:
    candidates: list[IpAddress] = [] if address is None else [address]
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        candidates.append(address.ipv4_mapped)  # an IPv4 entry covers its mapped form
    for entry in allow:
        if entry.lower() == host.lower():
            return True
        try:
            network = ipaddress.ip_network(entry, strict=False)
        except ValueError:
            continue  # a host name entry
        if any(a.version == network.version and a in network for a in candidates):
            return True
    return False


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def _internal(address: IpAddress) -> bool:
    """Whether an address is not a public one, IPv4 inside IPv6 (mapped, NAT64, 6to4)
    judged by the IPv4 address it carries."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return _internal(address.ipv4_mapped)
        if address.sixtofour is not None:
            return _internal(address.sixtofour)
        if address in _NAT64:
            return _internal(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    return not address.is_global or address.is_multicast


async def check_callback_url(url: str, allow: Sequence[str]) -> str:
    """The URL if a callback may go there; else :class:`InvalidRequestError` (422)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidRequestError(
            f"callback_url {url!r} must be an absolute http:// or https:// URL"
        )
    if parts.username or parts.password:
        raise InvalidRequestError("callback_url must not carry a user name or password")
    host = parts.hostname
    try:
        port = parts.port if parts.port is not None else (443 if parts.scheme == "https" else 80)
        if port == 0:
            raise ValueError("port 0")
    except ValueError:
        raise InvalidRequestError(f"callback_url {url!r} has an invalid port") from None
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        raise UnresolvableHostError(f"callback_url host {host!r} does not resolve") from None
    for info in infos:
        address = ipaddress.ip_address(str(info[4][0]).split("%", 1)[0])
        if _internal(address) and not _allowed(host, address, allow):
            raise InvalidRequestError(
                f"callback_url host {host!r} resolves to {address}, a private or internal "
                "address; the server's jobs.callback_allow must name it to allow it"
            )
    return url


async def deliver(
    url: str,
    body: bytes,
    secret: str,
    job_id: str,
    allow: Sequence[str],
    attempts: int = 6,
    timeout_s: float = 10.0,
    first_backoff_s: float = 1.0,
) -> bool:
    """POST ``body`` (JSON) to ``url``, signed; retried with exponential backoff on
    network errors, 408, 429 and 5xx. Returns whether a 2xx came back."""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        for attempt in range(attempts):
            if attempt:
                await asyncio.sleep(first_backoff_s * 2 ** (attempt - 1))
            try:
                await check_callback_url(url, allow)  # the address may have changed
            except UnresolvableHostError as exc:  # perhaps a passing resolver failure
                log.info("callback of job %s, attempt %d: %s", job_id, attempt + 1, exc.detail)
                continue
            except InvalidRequestError as exc:
                log.warning("callback of job %s not sent: %s", job_id, exc.detail)
                return False
            timestamp = int(time.time())
            headers = {
                "Content-Type": "application/json",
                "User-Agent": "ethostral-serve",
                TIMESTAMP_HEADER: str(timestamp),
                SIGNATURE_HEADER: sign(secret, timestamp, body),
                JOB_HEADER: job_id,
            }
            try:
                # Streamed and closed unread: a receiver cannot make us read a large body.
                async with client.stream("POST", url, content=body, headers=headers) as response:
                    pass
            except httpx.HTTPError as exc:
                log.info("callback of job %s, attempt %d: %r", job_id, attempt + 1, exc)
                continue
            if response.is_success:
                return True
            log.info(
                "callback of job %s, attempt %d: HTTP %d", job_id, attempt + 1, response.status_code
            )
            if response.status_code < 500 and response.status_code not in (408, 429):
                return False  # the receiver refused it; sending again will not help
    log.warning("callback of job %s to %s failed after %d attempts", job_id, url, attempts)
    return False
