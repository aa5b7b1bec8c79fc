"""Job callbacks: signing, the URL guard against internal addresses, and delivery to a
real loopback receiver."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ethostral_serve import callbacks
from ethostral_serve.callbacks import (
    JOB_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    TOLERANCE_S,
    check_callback_url,
    deliver,
    key_secret,
    sign,
    verify,
)
from ethostral_serve.errors import InvalidRequestError

SECRET = "whsec_test-secret"
NOW = 1_700_000_000
BODY = json.dumps({"id": "job-1", "status": "done", "text": "héllo"}).encode()


def headers_for(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    return {TIMESTAMP_HEADER: str(timestamp), SIGNATURE_HEADER: sign(secret, timestamp, body)}


# --- signing ---------------------------------------------------------------------------


def test_sign_verify_round_trip() -> None:
    headers = headers_for(SECRET, NOW, BODY)
    assert headers[SIGNATURE_HEADER].startswith("v1=")
    assert verify(SECRET, headers, BODY, now=NOW)
    assert verify(SECRET, headers, BODY, now=NOW + TOLERANCE_S)  # at the edge
    assert verify(SECRET, headers, BODY, now=NOW - 30)  # a receiver clock a bit behind


def test_verify_reads_headers_in_any_case() -> None:
    headers = {k.lower(): v for k, v in headers_for(SECRET, NOW, BODY).items()}
    assert verify(SECRET, headers, BODY, now=NOW)
    headers = {k.upper(): v for k, v in headers_for(SECRET, NOW, BODY).items()}
    assert verify(SECRET, headers, BODY, now=NOW)


def test_sign_is_hmac_sha256_of_timestamp_dot_body() -> None:
    import hashlib
    import hmac

    expected = hmac.new(SECRET.encode(), b"%d.%s" % (NOW, BODY), hashlib.sha256).hexdigest()
    assert sign(SECRET, NOW, BODY) == f"v1={expected}"


def test_verify_refuses_a_tampered_body() -> None:
    headers = headers_for(SECRET, NOW, BODY)
    assert not verify(SECRET, headers, BODY.replace(b"done", b"fail"), now=NOW)
    assert not verify(SECRET, headers, BODY + b" ", now=NOW)
    assert not verify(SECRET, headers, b"", now=NOW)


def test_verify_refuses_a_wrong_secret() -> None:
    headers = headers_for(SECRET, NOW, BODY)
    assert not verify(SECRET + "x", headers, BODY, now=NOW)
    assert not verify(key_secret("master", "alice"), headers, BODY, now=NOW)


@pytest.mark.parametrize("timestamp", [None, "", "soon", "1700000000.5", "0x6553f100", "１"])
def test_verify_refuses_a_missing_or_garbled_timestamp(timestamp: str | None) -> None:
    headers = {SIGNATURE_HEADER: sign(SECRET, NOW, BODY)}
    if timestamp is not None:
        headers[TIMESTAMP_HEADER] = timestamp
    assert not verify(SECRET, headers, BODY, now=NOW)


@pytest.mark.parametrize(
    "signature", [None, "", "v1=", "v0=abc", "v1=zz", "v1=é", "v1=\u2603", "v1=\udc80"]
)
def test_verify_refuses_a_missing_or_garbled_signature(signature: str | None) -> None:
    headers = {TIMESTAMP_HEADER: str(NOW)}
    if signature is not None:
        headers[SIGNATURE_HEADER] = signature
    assert not verify(SECRET, headers, BODY, now=NOW)


def test_verify_refuses_a_stale_or_future_timestamp() -> None:
    headers = headers_for(SECRET, NOW, BODY)
    assert not verify(SECRET, headers, BODY, now=NOW + TOLERANCE_S + 1)
    assert not verify(SECRET, headers, BODY, now=NOW - TOLERANCE_S - 1)
    assert not verify(SECRET, headers, BODY, tolerance_s=10, now=NOW + 11)
    assert verify(SECRET, headers, BODY, tolerance_s=10, now=NOW + 10)


def test_verify_refuses_a_signature_made_for_another_timestamp() -> None:
    # A replay with a fresh timestamp header over an old signature.
    headers = {
        TIMESTAMP_HEADER: str(NOW + 100),
        SIGNATURE_HEADER: sign(SECRET, NOW, BODY),
    }
    assert not verify(SECRET, headers, BODY, now=NOW + 100)


def test_key_secret_differs_per_owner_and_is_stable() -> None:
    master = callbacks.new_master_secret()
    alice, bob, server = (key_secret(master, o) for o in ("alice", "bob", None))
    assert len({alice, bob, server}) == 3
    assert all(s.startswith(callbacks.SECRET_PREFIX) for s in (alice, bob, server))
    assert key_secret(master, "alice") == alice
    assert key_secret(master, None) == server
    assert key_secret(callbacks.new_master_secret(), "alice") != alice
    assert callbacks.new_master_secret() != master
    # stable across processes too: a pure function of (master, owner)
    assert key_secret("m", "alice") == key_secret("m", "alice")
    assert key_secret("m", "alice") != key_secret("m", "alicf")


# --- the callback URL guard ------------------------------------------------------------


def check(url: str, allow: Sequence[str] = ()) -> str:
    return asyncio.run(check_callback_url(url, allow))


def refused(url: str, allow: Sequence[str] = ()) -> str:
    with pytest.raises(InvalidRequestError) as caught:
        check(url, allow)
    assert caught.value.status_code == 422
    return caught.value.detail


@pytest.mark.parametrize(
    "url",
    [
        "ftp://93.184.216.34/hook",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "gopher://93.184.216.34:70/",
        "93.184.216.34/hook",
        "//93.184.216.34/hook",
        "http:///hook",
        "",
    ],
)
def test_refuses_non_http_schemes_and_relative_urls(url: str) -> None:
    assert "http://" in refused(url)


@pytest.mark.parametrize(
    "url",
    [
        "http://user:secret@93.184.216.34/hook",
        "https://user@93.184.216.34/hook",
        "http://:secret@93.184.216.34/hook",
    ],
)
def test_refuses_urls_with_credentials(url: str) -> None:
    assert "password" in refused(url)


@pytest.mark.parametrize(
    "url",
    ["http://93.184.216.34:99999/", "http://93.184.216.34:http/", "https://93.184.216.34:-1/"],
)
def test_refuses_bad_ports(url: str) -> None:
    assert "port" in refused(url)


def test_refuses_unresolvable_hosts() -> None:
    assert "does not resolve" in refused("https://no-such-host.invalid/hook")


@pytest.mark.parametrize(
    ("url", "address"),
    [
        ("http://127.0.0.1/hook", "127.0.0.1"),
        ("http://127.8.9.10:8080/hook", "127.8.9.10"),
        ("http://[::1]/hook", "::1"),
        ("http://localhost/hook", "127.0.0.1"),
        ("http://10.1.2.3/hook", "10.1.2.3"),
        ("http://172.16.0.1/hook", "172.16.0.1"),
        ("http://192.168.1.1/hook", "192.168.1.1"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254"),  # cloud metadata
        ("http://100.64.0.1/hook", "100.64.0.1"),  # carrier-grade NAT
        ("http://0.0.0.0/hook", "0.0.0.0"),
        ("http://224.0.0.1/hook", "224.0.0.1"),
        ("http://[fe80::1]/hook", "fe80::1"),
        ("http://[fd00::1]/hook", "fd00::1"),
        ("http://[::ffff:127.0.0.1]/hook", "::ffff:127.0.0.1"),  # IPv4-mapped loopback
        ("http://[::ffff:169.254.169.254]/hook", "::ffff:169.254.169.254"),
        ("http://2130706433/hook", "127.0.0.1"),  # 127.0.0.1 as one decimal number
    ],
)
def test_refuses_internal_addresses(url: str, address: str) -> None:
    detail = refused(url)
    assert address in detail
    assert "callback_allow" in detail


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://127.0.0.1:9/hook", ["127.0.0.1"]),
        ("http://127.0.0.1/hook", ["127.0.0.0/8"]),
        ("http://[::1]/hook", ["::1"]),
        ("http://[::1]/hook", ["::1/128"]),
        ("http://localhost/hook", ["localhost"]),
        ("http://LOCALHOST/hook", ["localhost"]),
        ("http://localhost/hook", ["127.0.0.0/8"]),
        ("http://10.1.2.3/hook", ["10.0.0.0/8"]),
        ("http://192.168.1.1/hook", ["some-name", "192.168.0.0/16"]),
        ("http://169.254.169.254/hook", ["169.254.169.254/32"]),
        ("http://[::ffff:127.0.0.1]/hook", ["::ffff:127.0.0.1"]),
        ("http://[::ffff:127.0.0.1]/hook", ["::ffff:0:0/96"]),
    ],
)
def test_allows_internal_addresses_the_allow_list_names(url: str, allow: list[str]) -> None:
    assert check(url, allow) == url


@pytest.mark.parametrize(
    ("url", "allow"),
    [
        ("http://10.1.2.3/hook", ["10.9.0.0/16"]),
        ("http://192.168.1.1/hook", ["192.168.1.2"]),
        ("http://127.0.0.1/hook", ["localhost"]),  # a name allows the name, not the address
        ("http://169.254.169.254/hook", ["10.0.0.0/8", "not a network"]),
    ],
)
def test_an_allow_list_not_covering_the_address_still_refuses(url: str, allow: list[str]) -> None:
    refused(url, allow)


@pytest.mark.parametrize(
    "url",
    [
        "http://93.184.216.34/",
        "https://93.184.216.34:8443/hooks/ethostral?x=1",
        "http://[2606:2800:220:1:248:1893:25c8:1946]/hook",
    ],
)
def test_allows_public_addresses(url: str) -> None:
    # Literal addresses: getaddrinfo parses them without asking any DNS server.
    assert check(url) == url


# --- delivery to a real loopback receiver ----------------------------------------------


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Receiver:
    """A loopback HTTP server answering each path with scripted statuses (then 200)."""

    port: int = 0
    script: dict[str, list[int]] = field(default_factory=dict)
    requests: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self.lock:
            return [r for r in self.requests if r.path == path]

    def answer(self, method: str, path: str, headers: dict[str, str], body: bytes) -> int:
        with self.lock:
            self.requests.append(Received(method, path, headers, body))
            statuses = self.script.get(path, [])
            return statuses.pop(0) if statuses else 200


def handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            status = receiver.answer(self.command, self.path, dict(self.headers.items()), body)
            self.send_response(status)
            if status in (301, 302, 303, 307, 308):
                self.send_header("Location", receiver.url("/elsewhere"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = _handle
        do_GET = _handle
        do_PUT = _handle

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    recv = Receiver()
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler_for(recv))
    recv.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield recv
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def send(url: str, allow: Sequence[str] = ("127.0.0.1",), attempts: int = 4) -> bool:
    return asyncio.run(
        deliver(
            url,
            BODY,
            SECRET,
            "job-1",
            allow=list(allow),
            attempts=attempts,
            timeout_s=5.0,
            first_backoff_s=0.01,
        )
    )


def assert_genuine(request: Received) -> None:
    assert request.method == "POST"
    assert request.body == BODY
    assert verify(SECRET, request.headers, request.body)
    assert not verify(SECRET + "x", request.headers, request.body)
    lowered = {k.lower(): v for k, v in request.headers.items()}
    assert lowered[JOB_HEADER.lower()] == "job-1"
    assert lowered["content-type"] == "application/json"


def test_deliver_retries_a_server_error_then_succeeds(receiver: Receiver) -> None:
    receiver.script["/hook"] = [500, 200]
    assert send(receiver.url()) is True
    requests = receiver.on("/hook")
    assert len(requests) == 2
    for request in requests:
        assert_genuine(request)


def test_deliver_succeeds_at_once_on_2xx(receiver: Receiver) -> None:
    receiver.script["/hook"] = [204]
    assert send(receiver.url()) is True
    assert len(receiver.requests) == 1
    assert_genuine(receiver.requests[0])


@pytest.mark.parametrize("status", [400, 401, 403, 404, 410, 422])
def test_deliver_does_not_retry_a_permanent_refusal(receiver: Receiver, status: int) -> None:
    receiver.script["/hook"] = [status, 200]
    assert send(receiver.url()) is False
    assert len(receiver.requests) == 1
    assert_genuine(receiver.requests[0])


@pytest.mark.parametrize("status", [429, 408, 502, 503])
def test_deliver_retries_throttling_and_timeouts(receiver: Receiver, status: int) -> None:
    receiver.script["/hook"] = [status, status, 200]
    assert send(receiver.url()) is True
    assert len(receiver.on("/hook")) == 3


def test_deliver_gives_up_after_its_attempts(receiver: Receiver) -> None:
    receiver.script["/hook"] = [503] * 10
    assert send(receiver.url(), attempts=3) is False
    assert len(receiver.on("/hook")) == 3


def test_deliver_to_a_port_nobody_listens_on(caplog: pytest.LogCaptureFixture) -> None:
    # A bound socket that does not listen: connections to its port are refused, and no
    # other test can take the port while it is held.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        with caplog.at_level(logging.INFO, logger="ethostral_serve.callbacks"):
            assert send(f"http://127.0.0.1:{port}/hook", attempts=3) is False
    tries = [r for r in caplog.records if r.levelno == logging.INFO]
    assert [r.getMessage().split("attempt ")[1][:1] for r in tries] == ["1", "2", "3"]
    assert "failed after 3 attempts" in caplog.records[-1].getMessage()


def test_deliver_refuses_loopback_unless_allowed(
    receiver: Receiver, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="ethostral_serve.callbacks"):
        assert send(receiver.url(), allow=[]) is False
    assert receiver.requests == []
    assert any("not sent" in r.getMessage() for r in caplog.records)


def test_deliver_does_not_follow_redirects(receiver: Receiver) -> None:
    receiver.script["/hook"] = [302]
    assert send(receiver.url()) is False
    assert len(receiver.on("/hook")) == 1
    assert receiver.on("/elsewhere") == []


def test_deliver_signs_each_attempt_afresh(receiver: Receiver) -> None:
    receiver.script["/hook"] = [503, 503, 200]
    assert send(receiver.url()) is True
    requests = receiver.on("/hook")
    assert len(requests) == 3
    for request in requests:
        assert_genuine(request)
        lowered = {k.lower(): v for k, v in request.headers.items()}
        timestamp = int(lowered[TIMESTAMP_HEADER.lower()])
        assert lowered[SIGNATURE_HEADER.lower()] == sign(SECRET, timestamp, BODY)
