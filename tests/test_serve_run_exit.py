"""The service as a user runs it, stopped: ``serve run`` with Ctrl-C (SIGINT), and
``ethostral serve`` with SIGTERM (a service manager) or SIGINT. Each exits cleanly,
leaves nothing running (the embedded Redis included), and keeps its sessions on disk.

Ray's ``serve run`` alone does not shut Serve down on SIGTERM (``ray.init``'s handler
exits at once; it has aborted during teardown): that is what ``ethostral serve`` is for.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml
from redis_server import free_port

from ethostral_serve.embedded_redis import EmbeddedRedis
from ethostral_serve.schema import Session
from ethostral_serve.sessions import SessionStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]


def _config(tmp_path: Path, port: int) -> Path:
    """serve_config.yaml on another port (everything else as shipped)."""
    config = yaml.safe_load((REPO / "serve_config.yaml").read_text())
    config["http_options"]["port"] = port
    path = tmp_path / "serve_config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert proc.poll() is None, "serve run exited before it was ready"
        try:
            if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise AssertionError(f"serve run never became healthy within {timeout_s:g} s")


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("command", "sig"),
    [("serve", signal.SIGINT), ("ethostral", signal.SIGTERM), ("ethostral", signal.SIGINT)],
    ids=["serve-run-SIGINT", "ethostral-serve-SIGTERM", "ethostral-serve-SIGINT"],
)
def test_the_service_exits_cleanly_and_keeps_sessions(
    tmp_path: Path, command: str, sig: signal.Signals
) -> None:
    port = free_port()
    redis_dir = tmp_path / "redis"
    env = {
        **os.environ,
        "RAY_AUTH_MODE": "disabled",
        "ETHOSTRAL_REDIS__DATA_DIR": str(redis_dir),
        "ETHOSTRAL_REDIS__URL": "",
        "REDIS_URL": "",
    }
    program = Path(sys.executable).parent / command
    verb = "run" if command == "serve" else "serve"
    proc = subprocess.Popen(
        [str(program), verb, str(_config(tmp_path, port))],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group, like a terminal's foreground job
        # ethostral serve as a shell's background job (`cmd &`), which starts with SIGINT
        # ignored: its serve run must still get the Ctrl-C it forwards. Bare serve run as
        # a terminal's foreground job, where Ctrl-C works whatever ignored it in the
        # shell running these tests (a background job there ignores SIGINT too).
        preexec_fn=_ignore_sigint if command == "ethostral" else _default_sigint,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_healthy(url, proc)
        children = _descendants(proc.pid)
        assert any("redis-server" in " ".join(c.cmdline()) for c in children)
        session = Session(filename="kept.wav", language="en", duration_ms=1000)
        store = SessionStore(EmbeddedRedis(redis_dir).url)

        async def save() -> None:
            try:
                await store.save(session)
            finally:
                await store.aclose()

        asyncio.run(save())
        proc.send_signal(sig)
        assert proc.wait(timeout=120) == 0, f"{command} did not exit cleanly"
        psutil.wait_procs(children, timeout=30)
        left = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not left, [(c.pid, " ".join(c.cmdline())[:120]) for c in left]
    finally:
        if proc.poll() is None:  # a failed run leaves nothing behind either (serve run
            for child in _descendants(proc.pid):  # may sit in a session of its own)
                child.kill()
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    # The data was flushed: a new server on the same directory has the session.
    with EmbeddedRedis(redis_dir) as again:
        store = SessionStore(again.url)

        async def read() -> Session:
            try:
                return await store.get(session.id)
            finally:
                await store.aclose()

        assert asyncio.run(read()) == session
