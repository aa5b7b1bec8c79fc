"""Serve a custom handler on this machine the way Inference Endpoints does, to try a
model repository (or the tiny models) before creating an endpoint.

Like the Inference Endpoints toolkit, it imports ``handler.py`` from the model
directory (that directory first on the import path; this folder's copy when it has
none), builds ``EndpointHandler(model_dir)`` once, and answers ``POST /`` (or
``/predict``): JSON body with ``inputs`` → ``handler(body)`` → JSON, one call at a
time; a handler error is a 400 ``{"error": "..."}``. ``GET /`` and ``/health`` answer
``Ok``. With ``--token`` (or ``HF_TOKEN``), requests must carry it as a bearer token,
as an authenticated endpoint wants.

    ETHOSTRAL_ETHOSTRAL__MAX_NEW_TOKENS=64 \\
        .venv/bin/python deploy/hf-endpoint/local_server.py /tmp/ethostral-tiny --port 8081
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent

Handler = Callable[[dict[str, Any]], Any]


def load_handler(model_dir: Path) -> Handler:
    """``EndpointHandler(model_dir)`` from ``model_dir/handler.py`` (else this folder's),
    imported as the toolkit imports it."""
    source = model_dir / "handler.py"
    if not source.is_file():
        source = HERE / "handler.py"
    spec = importlib.util.spec_from_file_location("handler", source)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {source}")
    sys.path.insert(0, str(model_dir))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(model_dir))


class HandlerServer(ThreadingHTTPServer):
    """An HTTP server that calls ``handler`` one request at a time; ``calls`` counts the
    handler's calls."""

    daemon_threads = True

    def __init__(self, handler: Handler, port: int = 0, token: str | None = None) -> None:
        super().__init__(("127.0.0.1", port), _Requests)
        self.handler = handler
        self.token = token
        self.calls = 0
        self.turn = threading.Lock()  # the toolkit runs one handler call at a time

    @property
    def url(self) -> str:
        """Where it listens."""
        host, port = self.server_address[:2]
        return f"http://{host}:{port}/"


class _Requests(BaseHTTPRequestHandler):
    server: HandlerServer

    def do_GET(self) -> None:
        if self.path.split("?")[0] in ("/", "/health"):
            self._send(200, b"Ok", "text/plain")
        else:
            self._send(404, b"Not Found", "text/plain")

    def do_POST(self) -> None:
        if self.path.split("?")[0] not in ("/", "/predict"):
            self._send(404, b"Not Found", "text/plain")
            return
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        token = self.server.token
        if token and self.headers.get("Authorization") != f"Bearer {token}":
            self._json(401, {"error": "Invalid credentials in Authorization header"})
            return
        try:
            data = json.loads(body)
            if not isinstance(data, dict) or "inputs" not in data:
                raise ValueError(f"Body needs to provide a inputs key, received: {body[:200]!r}")
            with self.server.turn:
                self.server.calls += 1
                answer = self.server.handler(data)
        except Exception as exc:  # the toolkit answers every handler error so
            self._json(400, {"error": str(exc)})
            return
        self._json(200, answer)

    def _json(self, status: int, value: Any) -> None:
        self._send(status, json.dumps(value).encode(), "application/json")

    def _send(self, status: int, body: bytes, media_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", media_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet; the handler logs what matters


@contextmanager
def serving(handler: Handler, port: int = 0, token: str | None = None) -> Iterator[HandlerServer]:
    """``handler`` served on 127.0.0.1 from a background thread while the block runs."""
    server = HandlerServer(handler, port, token)
    thread = threading.Thread(target=server.serve_forever, name="handler-server", daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def main(argv: list[str] | None = None) -> int:
    """Load the handler from the model directory and serve it until interrupted."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_dir", type=Path, help="the model repository's directory")
    parser.add_argument("--port", type=int, default=8081)
    parser.add_argument("--token", default=os.environ.get("HF_TOKEN") or None)
    args = parser.parse_args(argv)
    server = HandlerServer(load_handler(args.model_dir.resolve()), args.port, args.token)
    print(f"serving {args.model_dir} at {server.url}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
