"""The embedded Redis is refused on a multi-node Ray cluster; one machine still gets it.

These tests never start Ray: the node count is a parameter of ``resolve_redis_url``, and
``alive_ray_nodes`` is checked against a process without Ray and against a stand-in for
``ray.nodes()``. The real multi-node run is a script that starts two Ray nodes.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from redis_server import run

from ethostral_serve.embedded_redis import alive_ray_nodes, resolve_redis_url
from ethostral_serve.errors import ConfigurationError
from ethostral_serve.sessions import SessionStore
from ethostral_serve.settings import RedisSettings, Settings


def test_a_multi_node_cluster_refuses_the_embedded_redis(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError) as caught:
        resolve_redis_url(Settings(cache_dir=tmp_path), count_nodes=lambda: 2)
    detail = caught.value.detail
    assert "2 alive nodes" in detail
    assert "shared Redis" in detail
    assert "redis.url" in detail and "ETHOSTRAL_REDIS__URL" in detail
    assert caught.value.status_code == 500  # a deployment fault, not the client's
    assert not (tmp_path / "redis").exists()  # nothing was started


@pytest.mark.parametrize("nodes", [None, 1], ids=["not-on-ray", "one-node"])
def test_one_machine_still_gets_the_embedded_redis(tmp_path: Path, nodes: int | None) -> None:
    url, server = resolve_redis_url(Settings(cache_dir=tmp_path), count_nodes=lambda: nodes)
    assert server is not None
    try:
        assert url == server.url
        store = SessionStore(url)
        run(store.ping(), store)
    finally:
        server.stop()


def test_a_configured_url_needs_no_node_count(tmp_path: Path) -> None:
    """With ``redis.url`` set, any cluster size is fine and the cluster is not asked."""
    asked: list[bool] = []

    def count() -> int:
        asked.append(True)
        return 3

    settings = Settings(cache_dir=tmp_path, redis=RedisSettings(url="redis://shared:6379/0"))
    assert resolve_redis_url(settings, count_nodes=count) == ("redis://shared:6379/0", None)
    assert asked == []


def test_alive_ray_nodes_is_none_and_imports_nothing_without_ray() -> None:
    """The CLI path: a process that never imported Ray is on no cluster, and the check
    does not import Ray (a slow import) to find that out."""
    code = (
        "import sys\n"
        "from ethostral_serve.embedded_redis import alive_ray_nodes\n"
        "print(alive_ray_nodes(), 'ray' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == ["None", "False"]


def test_alive_ray_nodes_is_none_when_ray_is_not_initialised() -> None:
    import ray

    if ray.is_initialized():
        pytest.skip("another test of this run left Ray initialised")
    assert alive_ray_nodes() is None


def test_alive_ray_nodes_counts_only_alive_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dead nodes stay in ``ray.nodes()`` (with ``Alive: False``) and must not count."""
    import ray

    nodes = [{"NodeID": "a", "Alive": True}, {"NodeID": "b", "Alive": False}]
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "nodes", lambda: nodes)
    assert alive_ray_nodes() == 1
    nodes.append({"NodeID": "c", "Alive": True})
    assert alive_ray_nodes() == 2
