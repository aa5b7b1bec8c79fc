"""``serve run CONFIG`` on a local Ray whose Prometheus metrics port is fixed.

``serve run`` starts its own local Ray, and that Ray exports metrics on a random port:
neither the Serve config nor an environment variable sets it. This module starts that
Ray itself, with ``ray.init(_metrics_export_port=PORT)``, then runs Ray's own
``serve run CONFIG``, which finds Ray initialised and deploys onto it. Where a Ray is
already running on this machine (``ray start``) or ``RAY_ADDRESS`` names one,
``ray.init`` connects to it instead and that cluster's port applies
(``ray start --metrics-export-port``).

``ethostral serve`` runs this (``python -m ethostral_serve.serve.serve_run``).
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_METRICS_PORT = 8080


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """``CONFIG [--metrics-port PORT]``."""
    parser = argparse.ArgumentParser(prog="python -m ethostral_serve.serve.serve_run")
    parser.add_argument("config", help="Serve config file")
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=DEFAULT_METRICS_PORT,
        help="Ray's metrics export port (http://HOST:PORT/metrics); 0: a random one "
        "(default: %(default)s)",
    )
    args = parser.parse_args(argv)
    if not 0 <= args.metrics_port <= 65535:
        parser.error(f"--metrics-port must be 0-65535, got {args.metrics_port}")
    return args


def main(argv: list[str] | None = None) -> int:
    """Start Ray with the metrics port, then ``serve run CONFIG`` until it exits."""
    args = parse_args(argv)
    import ray
    from ray.serve._private.constants import SERVE_NAMESPACE
    from ray.serve.scripts import run

    # What `serve run` would call, plus the port; it skips its own ray.init after this.
    ray.init(namespace=SERVE_NAMESPACE, _metrics_export_port=args.metrics_port or None)
    # Ray's `serve run` exits through sys.exit (Ctrl-C: after shutting Serve down).
    run.main(args=[args.config], prog_name="serve run", standalone_mode=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
