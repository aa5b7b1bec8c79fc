"""``ethostral serve``: ``serve run CONFIG`` under a parent that turns SIGTERM into Ctrl-C.

Ray's ``serve run`` shuts Serve down cleanly only on Ctrl-C (SIGINT). On SIGTERM, which
service managers send (systemd, ``docker stop``, Kubernetes), ``ray.init``'s handler
exits at once without ``serve.shutdown()``, and the interpreter may abort while Ray
tears down. This wrapper runs ``serve run`` in its own session and forwards SIGTERM and
SIGINT to it as one SIGINT, so both end the way Ctrl-C does.

The local Ray it starts exports Prometheus metrics on a fixed port (``--metrics-port``,
8080), where bare ``serve run`` picks a random one (:mod:`ethostral_serve.serve.serve_run`).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
from types import FrameType
from typing import Any

from ethostral_serve.serve.serve_run import DEFAULT_METRICS_PORT


def add_serve_parser(sub: Any) -> None:
    """Add ``serve [CONFIG]`` to the command line's sub-commands."""
    s = sub.add_parser(
        "serve",
        help="run the service (serve run CONFIG) so that SIGTERM stops it cleanly",
        description=__doc__.split("\n\n")[1].replace("\n", " "),
    )
    s.add_argument(
        "config", nargs="?", default="serve_config.yaml", help="Serve config (default: %(default)s)"
    )
    s.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="port where Ray exports Prometheus metrics, http://HOST:PORT/metrics; 0: a "
        "random one (default: %(default)s)",
    )


def run_serve(args: argparse.Namespace) -> int:
    """Run ``serve run CONFIG`` until it exits; its exit code."""
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def forward(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        # First signal: shut down as Ctrl-C does. Another: stop waiting for that.
        for child in children:
            child.send_signal(signal.SIGTERM if stopping else signal.SIGINT)
        stopping = True

    # Handlers first: a started child then gets SIGINT at its default, not the "ignored"
    # a shell gives background jobs (under which serve run would never see Ctrl-C).
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # Its own session: a terminal's Ctrl-C reaches only this process, which forwards it
    # once (a second SIGINT would interrupt Serve's shutdown).
    command = [sys.executable, "-m", "ethostral_serve.serve.serve_run", args.config]
    command += ["--metrics-port", str(args.metrics_port)]
    children.append(subprocess.Popen(command, start_new_session=True))
    return children[0].wait()
