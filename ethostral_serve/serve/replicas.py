"""Whether a deployment has a replica running, as the Serve controller reports it.

A call to a deployment with no running replica waits in Serve's router until one starts.
While a crashed replica is replaced that takes seconds; when its node is gone and no
other node can host it (a custom resource only that node had), it never comes. The
ingress therefore waits for a call in short slices and, between them, asks (at most every
``ttl_s``, for all callers) how many replicas each deployment runs: after ``grace_s``
without any, the call fails with a 503 instead of hanging until its timeout.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

log = logging.getLogger("ethostral_serve.replicas")

ReplicaCounts = Callable[[], dict[str, int]]


def serve_replica_counts() -> dict[str, int]:
    """Running replicas of each deployment of this replica's application ({} outside a
    replica or when the controller does not answer)."""
    from ray import serve

    try:
        app = serve.get_replica_context().app_name
        status = serve.status()
    except Exception as exc:  # not in a replica, or no controller: nothing known
        log.debug("no replica counts: %r", exc)
        return {}
    application = status.applications.get(app)
    if application is None:
        return {}
    return {
        name: int(d.replica_states.get("RUNNING", 0)) for name, d in application.deployments.items()
    }


class ReplicaWatch:
    """How long each deployment has been seen without a running replica.

    The counts are fetched on a thread of their own, never by a caller: a controller that
    is slow to answer delays the news, not the calls waiting for their results.
    """

    def __init__(
        self,
        counts: ReplicaCounts = serve_replica_counts,
        ttl_s: float = 2.0,
        clock: Callable[[], float] = time.monotonic,
        background: bool = True,
    ) -> None:
        self._counts = counts
        self.ttl_s = ttl_s
        self._clock = clock
        self._background = background
        self._lock = threading.Lock()
        self._asked_at: float | None = None
        self._seen_at: float | None = None
        self._fetching = False
        self._none_since: dict[str, float] = {}

    def without_replicas_s(self, deployment: str) -> float:
        """Seconds ``deployment`` has had no running replica, as far as seen (0: it has
        one, or nothing is known)."""
        now = self._clock()
        with self._lock:
            due = self._asked_at is None or now - self._asked_at >= self.ttl_s
            fetch = due and not self._fetching
            if fetch:
                self._asked_at = now
                self._fetching = True
        if fetch:
            if self._background:
                threading.Thread(target=self._fetch, daemon=True).start()
            else:
                self._fetch()
        with self._lock:
            since = self._none_since.get(deployment)
            fresh = self._seen_at is not None and now - self._seen_at <= 2 * self.ttl_s + 1.0
        # Counts from before a quiet spell say nothing about now (a node may have come
        # back): until the refresh just asked for lands, nothing is known.
        return 0.0 if since is None or not fresh else now - since

    def _fetch(self) -> None:
        try:
            counts = self._counts()
        except Exception as exc:  # unknown: nothing changes
            log.debug("replica counts: %r", exc)
            counts = None
        now = self._clock()
        with self._lock:
            self._fetching = False
            if counts is None:
                return
            # A zero seen long ago says nothing about now: start counting afresh.
            stale = self._seen_at is None or now - self._seen_at > 3 * self.ttl_s + 5.0
            self._seen_at = now
            for name, running in counts.items():
                if running > 0:
                    self._none_since.pop(name, None)
                elif stale or name not in self._none_since:
                    self._none_since[name] = now
            for name in set(self._none_since) - set(counts):
                del self._none_since[name]  # unknown now: assume nothing


WATCH = ReplicaWatch()
