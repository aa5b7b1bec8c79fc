"""Shared fixtures: where the evaluation data lives, and loaded models (once per run)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from redis_server import redis_server

os.environ.setdefault("WEAVE_DISABLED", "true")
os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "0")

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ETHOSTRAL_TEST_DATA", REPO.parent / "shared" / "data"))


def require_data(*parts: str) -> Path:
    """Path under ../shared/data, or skip the test saying the data is absent."""
    path = DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"evaluation data not found at {path} (../shared/data is absent)")
    return path


@pytest.fixture(scope="session")
def settings():
    """Default settings, with the model cache under the user's cache dir."""
    from ethostral_serve.settings import Settings

    return Settings()


@pytest.fixture(scope="session")
def engine(settings):
    """Every real embedded model, loaded once for the whole test run."""
    from ethostral_serve.engine import Engine

    return Engine.load(settings)


@pytest.fixture(scope="session")
def tagging_voxtral(tmp_path_factory):
    """A deaf tiny Voxtral and a LoRA adapter trained to write ``TAGGED_SCRIPT``."""
    from tiny_voxtral import build_tagging_adapter, build_tiny_voxtral

    root = tmp_path_factory.mktemp("tagging-voxtral")
    base = build_tiny_voxtral(root / "voxtral", deaf=True)
    return base, build_tagging_adapter(base, root / "adapter")


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free loopback port, without persistence (one per
    test module)."""
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    """A plain synchronous client on the same server, to look behind the stores' backs."""
    with redis.Redis.from_url(redis_url) as client:
        yield client


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """End the test process without the interpreter's teardown, once pytest has reported.

    The session loads ONNX Runtime, CTranslate2, torch and an in-process Ray; their native
    thread pools and static destructors sometimes crash while the interpreter shuts down
    after every test has passed (a SIGSEGV at exit, seen in 2 of 3 full runs on
    2026-12-02, never inside a test). The result is already decided and printed here, so
    the process exits with pytest's status instead of running that teardown.
    """
    import sys

    status = getattr(config, "_ethostral_exitstatus", None)
    if status is None or os.environ.get("ETHOSTRAL_TEST_FULL_TEARDOWN"):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(int(status))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Keep the session's exit status for :func:`pytest_unconfigure`."""
    session.config._ethostral_exitstatus = exitstatus  # type: ignore[attr-defined]
