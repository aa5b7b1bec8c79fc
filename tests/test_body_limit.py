"""BodyLimitMiddleware on raw ASGI messages: declared and undeclared body sizes."""

from __future__ import annotations

import asyncio
import json

from starlette.types import Message, Receive, Scope, Send

from ethostral_serve.api.body_limit import BodyLimitMiddleware


async def _echo_size(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that reads the whole body and answers 200 with its size."""
    size = 0
    more = True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = json.dumps({"size": size}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def _swallowing_app(scope: Scope, receive: Receive, send: Send) -> None:
    """An app that turns any body-read failure into its own 400 (as FastAPI does)."""
    try:
        await _echo_size(scope, receive, lambda m: asyncio.sleep(0))
        status = 200
    except Exception:
        status = 400
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


def _call(
    app, chunks: list[bytes], path: str = "/transcribe", declared: int | None = None
) -> tuple[int, dict]:
    headers = [] if declared is None else [(b"content-length", str(declared).encode())]
    scope = {"type": "http", "method": "POST", "path": path, "headers": headers}
    queue = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1}
        for i, c in enumerate(chunks)
    ]
    sent: list[Message] = []

    async def receive() -> Message:
        return queue.pop(0) if queue else {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        sent.append(message)

    asyncio.run(
        BodyLimitMiddleware(app, max_bytes=1000, paths=("/transcribe",))(scope, receive, send)
    )
    starts = [m for m in sent if m["type"] == "http.response.start"]
    assert len(starts) == 1, sent  # exactly one response, never two
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return starts[0]["status"], json.loads(body or b"{}")


def test_under_the_limit_passes_through() -> None:
    status, body = _call(_echo_size, [b"x" * 400, b"y" * 600])
    assert (status, body) == (200, {"size": 1000})


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    status, body = _call(_echo_size, [b"x" * 10], declared=5000)
    assert status == 413 and "1000 bytes" in body["detail"]


def test_undeclared_stream_is_cut_off_once_over_the_limit() -> None:
    status, body = _call(_echo_size, [b"x" * 600, b"y" * 600, b"z" * 600])
    assert status == 413 and "detail" in body


def test_the_apps_own_error_for_the_cut_body_is_replaced() -> None:
    status, body = _call(_swallowing_app, [b"x" * 600, b"y" * 600])
    assert status == 413 and "detail" in body


def test_other_paths_are_not_limited() -> None:
    status, body = _call(_echo_size, [b"x" * 5000], path="/other")
    assert (status, body) == (200, {"size": 5000})
