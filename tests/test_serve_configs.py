"""The Serve config files, read the way ``serve run`` / ``serve deploy`` read them."""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "serve_config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
DEPLOYMENTS = {"Ingress", "VAD", "Diarizer", "EthostralModel"}
# folders that hold no shipped config: virtual environments, caches, build output
NOT_SHIPPED = {"node_modules", "__pycache__", "site-packages", "venv", "build", "dist"}


def _load(path: Path):
    from ray.serve.schema import ServeDeploySchema

    return ServeDeploySchema.model_validate(yaml.safe_load(path.read_text(encoding="utf-8")))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_is_valid_and_builds_the_graph(path: Path) -> None:
    """Ray's schema accepts the file and the builder turns its args into the graph."""
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary
    from ray.serve.deployment import Application

    from ethostral_serve.serve.app import build_app

    schema = _load(path)
    (app,) = schema.applications
    assert app.import_path == "ethostral_serve.serve.app:build_app"
    assert {d.name for d in app.deployments} == DEPLOYMENTS
    built = call_user_app_builder_with_args_if_necessary(build_app, app.args)
    assert isinstance(built, Application)
    model = next(d for d in app.deployments if d.name == "EthostralModel")
    from ethostral_serve.serve.deployments import BatchConfig

    assert set(model.user_config) <= set(BatchConfig.model_fields)  # no misspelt knob
    BatchConfig.model_validate(model.user_config)
    batch = model.user_config["max_batch_size"]
    assert model.max_ongoing_requests > batch  # batches can fill from concurrent requests


def test_default_config_fits_two_cores_and_listens_on_loopback() -> None:
    schema = _load(REPO / "serve_config.yaml")
    assert (schema.http_options.host, schema.http_options.port) == ("127.0.0.1", 8000)
    (app,) = schema.applications
    cpus = sum(d.ray_actor_options.num_cpus * (d.num_replicas or 1) for d in app.deployments)
    assert cpus <= 2.0
    assert all(not d.ray_actor_options.num_gpus for d in app.deployments)
    # the embedded default models; the ASR model yields the CPU to live drafts
    assert app.args == {"settings": {"asr": {"cpu_priority": "idle"}}}


def test_gpu_config_shares_one_card_with_fractional_gpus() -> None:
    (app,) = _load(REPO / "configs" / "gpu.yaml").applications
    gpus = {d.name: d.ray_actor_options.num_gpus or 0 for d in app.deployments}
    assert 0 < gpus["EthostralModel"] < 1 and 0 < gpus["Diarizer"] < 1
    replicas = {d.name: d.num_replicas or 1 for d in app.deployments}
    assert sum(gpus[n] * replicas[n] for n in gpus) <= 1.0


def test_a_bad_settings_override_fails_when_building_not_in_replicas() -> None:
    from pydantic import ValidationError
    from ray.serve._private.api import call_user_app_builder_with_args_if_necessary

    from ethostral_serve.serve.app import build_app

    with pytest.raises(ValidationError, match="beam_size"):
        call_user_app_builder_with_args_if_necessary(
            build_app, {"settings": {"asr": {"beam_size": 0}}}
        )


def test_an_evicted_adapter_is_unloaded_once() -> None:
    """Serve calls ``__del__`` when it evicts a multiplexed adapter; so may the GC."""
    from ethostral_serve.serve.deployments import LoadedAdapter

    class _Model:
        def __init__(self) -> None:
            self.unloaded: list[str] = []

        def unload_adapter(self, name: str) -> None:
            self.unloaded.append(name)

    model = _Model()
    held = LoadedAdapter(model, "calls")
    held.__del__()  # Serve's eviction
    held.unload()
    del held  # garbage collection
    assert model.unloaded == ["calls"]


def _shipped_yaml() -> list[Path]:
    """Every YAML file of the repository but hidden, virtual-environment and build folders."""
    return sorted(
        path
        for path in [*REPO.rglob("*.yaml"), *REPO.rglob("*.yml")]
        if not any(
            part.startswith(".") or part in NOT_SHIPPED or part.endswith(".egg-info")
            for part in path.relative_to(REPO).parts
        )
    )


SHIPPED = _shipped_yaml()


def _serve_configs(node: Any, where: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """Serve configs in a YAML document: itself, nested (a KubeRay spec) or as YAML text."""
    if isinstance(node, dict):
        if isinstance(node.get("applications"), list):
            yield where, node
            return
        for key, value in node.items():
            yield from _serve_configs(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _serve_configs(value, f"{where}[{i}]")
    elif isinstance(node, str) and "applications:" in node:  # e.g. RayService serveConfigV2
        try:
            inner = yaml.safe_load(node)
        except yaml.YAMLError:
            return
        yield from _serve_configs(inner, where)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _settings(overrides: dict[str, Any]):
    from ethostral_serve.settings import Settings

    return Settings(**overrides)


@pytest.fixture
def no_auth_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment must not turn auth on for a config that leaves it off."""
    for name in list(os.environ):
        if name.upper().startswith("ETHOSTRAL_AUTH"):
            monkeypatch.delenv(name)


def test_every_yaml_file_is_found() -> None:
    names = {str(p.relative_to(REPO)) for p in SHIPPED}
    assert {"serve_config.yaml", "cluster.yaml", "configs/gpu.yaml"} <= names, names


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(REPO)))
def test_a_config_listening_beyond_loopback_requires_api_keys(
    path: Path, no_auth_env: None
) -> None:
    """Serve configs (plain, nested or embedded) on a non-loopback host set auth.required.

    A file that deploys a Serve config by path (``serve deploy|run X.yaml`` in a
    cluster-launcher's commands) must name a file of this repository, checked here too.
    """
    from ray.serve.schema import ServeDeploySchema

    name = str(path.relative_to(REPO))
    text = path.read_text(encoding="utf-8")
    for doc_index, doc in enumerate(yaml.safe_load_all(text)):
        for where, raw in _serve_configs(doc, f"{name}[doc {doc_index}]"):
            schema = ServeDeploySchema.model_validate(raw)
            host = schema.http_options.host  # Ray's default when unset: 0.0.0.0
            if _is_loopback(host):
                continue
            for app in schema.applications:
                overrides = (app.args or {}).get("settings", {})
                assert _settings(overrides).auth.required, (
                    f"{where}: application {app.name!r} listens on {host} but its "
                    "args.settings lack `auth: {required: true}`"
                )
    for ref in re.findall(r"\bserve\s+(?:deploy|run)\s+(\S+\.ya?ml)\b", text):
        parts = Path(ref).parts
        found = [REPO.joinpath(*parts[i:]) for i in range(len(parts))]
        assert any(p in SHIPPED for p in found), (
            f"{name} deploys {ref}, which is not a YAML file of this repository, "
            "so nothing checks that it requires API keys"
        )


def test_the_default_config_stays_on_loopback_without_auth(no_auth_env: None) -> None:
    """serve_config.yaml is for one machine: loopback only, no API keys needed."""
    schema = _load(REPO / "serve_config.yaml")
    assert _is_loopback(schema.http_options.host), (
        f"serve_config.yaml listens on {schema.http_options.host}, beyond loopback"
    )
    for app in schema.applications:
        assert not _settings(app.args.get("settings", {})).auth.required, "serve_config.yaml"


def _raw_app(path: Path) -> dict[str, Any]:
    (app,) = yaml.safe_load(path.read_text(encoding="utf-8"))["applications"]
    return app


def _deployments(path: Path) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in _raw_app(path)["deployments"]}


def _replicas(dep: dict[str, Any], bound: str) -> int:
    """A deployment's replicas at its autoscaling ``min``/``max``, or its fixed count."""
    scaling = dep.get("autoscaling_config")
    return int(scaling[f"{bound}_replicas"]) if scaling else int(dep.get("num_replicas", 1))


def _actor(dep: dict[str, Any], key: str, default: float) -> float:
    return float(dep.get("ray_actor_options", {}).get(key, default))


AUTOSCALED = [
    (path, name)
    for path in CONFIGS
    for name, dep in _deployments(path).items()
    if dep.get("autoscaling_config")
]


@pytest.mark.parametrize(("path", "name"), AUTOSCALED, ids=[f"{p.name}:{n}" for p, n in AUTOSCALED])
def test_an_autoscaled_deployment_can_reach_its_target(path: Path, name: str) -> None:
    """The target lies below max_ongoing_requests (else replicas can never report more
    than it), and the batched model is not scaled out before one batch is full."""
    dep = _deployments(path)[name]
    scaling = dep["autoscaling_config"]
    assert 1 <= scaling["min_replicas"] <= scaling["max_replicas"]
    target = scaling["target_ongoing_requests"]
    assert target < dep["max_ongoing_requests"]
    if name == "EthostralModel":
        assert target >= dep["user_config"]["max_batch_size"]


def test_autoscale_local_fits_two_cores_at_its_maximum() -> None:
    path = REPO / "configs" / "autoscale-local.yaml"
    assert _load(path).http_options.host == "127.0.0.1"
    deps = _deployments(path)
    for name in ("EthostralModel", "Diarizer"):
        scaling = deps[name]["autoscaling_config"]
        assert (scaling["min_replicas"], scaling["max_replicas"]) == (1, 2), name
        assert "num_replicas" not in deps[name]
        assert scaling["downscale_delay_s"] <= 10, "a demo: back to one replica quickly"
    cpus = sum(_actor(d, "num_cpus", 1) * _replicas(d, "max") for d in deps.values())
    assert cpus <= 2.0  # every replica Serve may start fits on 2 cores
    assert all(not _actor(d, "num_gpus", 0) for d in deps.values())


def test_ethostral_gpu_minimum_shares_one_card() -> None:
    """At its minimum replicas the production config fits one GPU, as before autoscaling;
    deploy/rayservice.yaml's test checks the maximum against its GPU pods."""
    deps = _deployments(REPO / "configs" / "ethostral-gpu.yaml")
    gpus = {n: _actor(d, "num_gpus", 0) for n, d in deps.items()}
    assert 0 < gpus["EthostralModel"] < 1 and 0 < gpus["Diarizer"] < 1
    assert sum(gpus[n] * _replicas(d, "min") for n, d in deps.items()) <= 1.0 + 1e-9


def test_local_cluster_places_the_model_on_the_worker_and_shares_redis(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """configs/local-cluster.yaml: the `ray start` lines in its header give only the worker
    the custom resource the model asks for, the replicas fit the two nodes, and sessions
    go to a shared Redis (the embedded one is refused on two nodes)."""
    from ethostral_serve.embedded_redis import resolve_redis_url

    path = REPO / "configs" / "local-cluster.yaml"
    text = path.read_text(encoding="utf-8")
    head = re.search(r"ray start --head\b.*--num-cpus=(\d+)", text)
    worker = re.search(r"ray start --address=\S+ --num-cpus=(\d+) --resources='(\{[^']*\})'", text)
    assert head and worker, "the header must show how to start both nodes"
    worker_cpus, worker_resources = float(worker.group(1)), yaml.safe_load(worker.group(2))
    head_cpus = float(head.group(1))

    deps = _deployments(path)
    model = deps["EthostralModel"]["ray_actor_options"]
    custom = model.get("resources", {})
    assert custom and set(custom) <= set(worker_resources), "the model must need the worker"
    for name, need in custom.items():
        assert need * _replicas(deps["EthostralModel"], "max") <= worker_resources[name]
    assert model["num_cpus"] <= worker_cpus
    others = [d for n, d in deps.items() if n != "EthostralModel"]
    assert all(not d.get("ray_actor_options", {}).get("resources") for d in others)
    cpus = sum(_actor(d, "num_cpus", 1) * _replicas(d, "max") for d in deps.values())
    assert cpus <= head_cpus + worker_cpus

    assert _is_loopback(_load(path).http_options.host)
    for name in list(os.environ):
        if name.upper().startswith("ETHOSTRAL_REDIS"):
            monkeypatch.delenv(name)
    overrides = _raw_app(path)["args"]["settings"]
    url = overrides["redis"]["url"]
    assert url.startswith("redis://")
    assert resolve_redis_url(_settings(overrides), count_nodes=lambda: 2) == (url, None)
