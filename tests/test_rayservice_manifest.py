"""deploy/rayservice.yaml: the KubeRay RayService runs configs/ethostral-gpu.yaml as is.

Checked without Kubernetes: the embedded Serve config (a YAML string) is Ray's schema and
the same applications as the GPU config, the pods have the GPUs, CPUs, models and Redis
those applications need.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from ethostral_serve.embedded_redis import resolve_redis_url

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "deploy" / "rayservice.yaml"
GPU_CONFIG = REPO / "configs" / "ethostral-gpu.yaml"
MODELS_MOUNT = "/opt/ethostral/models"
GPU = "nvidia.com/gpu"


def _manifest() -> dict[str, Any]:
    (doc,) = yaml.safe_load_all(MANIFEST.read_text(encoding="utf-8"))
    return doc


def _serve_config() -> dict[str, Any]:
    text = _manifest()["spec"]["serveConfigV2"]
    assert isinstance(text, str), "KubeRay takes serveConfigV2 as a YAML string"
    return yaml.safe_load(text)


def _cluster() -> dict[str, Any]:
    return _manifest()["spec"]["rayClusterConfig"]


def _containers(group: dict[str, Any]) -> list[dict[str, Any]]:
    return group["template"]["spec"]["containers"]


def _ray_container(group: dict[str, Any]) -> dict[str, Any]:
    """The Ray container of a group's pod (KubeRay takes the first)."""
    return _containers(group)[0]


def _cpus(quantity: str | int | float) -> float:
    """A Kubernetes CPU quantity ("4", "500m") in cores."""
    text = str(quantity)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _gpus(group: dict[str, Any]) -> int:
    return int(_ray_container(group)["resources"].get("limits", {}).get(GPU, 0))


def _deployments() -> list[dict[str, Any]]:
    (app,) = _serve_config()["applications"]
    return app["deployments"]


def _replicas(dep: dict[str, Any], bound: str) -> int:
    """A deployment's replicas at its autoscaling ``min``/``max``, or its fixed count."""
    scaling = dep.get("autoscaling_config")
    if scaling:
        return int(scaling[f"{bound}_replicas"])
    return int(dep.get("num_replicas", 1))


def _need(resource: str, bound: str) -> float:
    """GPUs (``num_gpus``) or CPUs (``num_cpus``) all replicas need at ``bound``."""
    return sum(
        float(dep.get("ray_actor_options", {}).get(resource, 1 if resource == "num_cpus" else 0))
        * _replicas(dep, bound)
        for dep in _deployments()
    )


def test_manifest_is_a_ray_io_v1_rayservice() -> None:
    doc = _manifest()
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayService")
    assert set(doc["spec"]) >= {"serveConfigV2", "rayClusterConfig"}


def test_serve_config_has_exactly_the_gpu_configs_applications() -> None:
    """The RayService deploys what configs/ethostral-gpu.yaml deploys: an edit to one
    without the other fails here."""
    gpu = yaml.safe_load(GPU_CONFIG.read_text(encoding="utf-8"))
    assert _serve_config()["applications"] == gpu["applications"]


def test_serve_config_passes_rays_schema_and_listens_for_the_serve_service() -> None:
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(_serve_config())
    assert schema.http_options.host == "0.0.0.0"  # the Service reaches the pods' proxies
    assert schema.proxy_location == "EveryNode"
    groups = [_cluster()["headGroupSpec"], *_cluster()["workerGroupSpecs"]]
    for group in groups:
        ports = {p.get("name"): p["containerPort"] for p in _ray_container(group)["ports"]}
        assert ports.get("serve") == schema.http_options.port


def test_every_request_needs_an_api_key() -> None:
    (app,) = _serve_config()["applications"]
    assert app["args"]["settings"]["auth"]["required"] is True


def test_the_gpu_workers_have_the_gpus_the_replicas_need() -> None:
    """The always-up GPU pods hold the minimum replicas; the most pods, the maximum; one
    card holds any one replica; and the cluster can add pods when the maximum needs them."""
    cluster = _cluster()
    assert _gpus(cluster["headGroupSpec"]) == 0, "the head is meant to be a CPU pod"
    workers = cluster["workerGroupSpecs"]
    gpu_groups = [g for g in workers if _gpus(g) >= 1]
    assert gpu_groups, "no worker group requests nvidia.com/gpu"
    for group in gpu_groups:
        resources = _ray_container(group)["resources"]
        limits, requests = resources["limits"], resources.get("requests", {})
        assert requests.get(GPU, limits[GPU]) == limits[GPU], "GPU requests must equal limits"
    at_least = sum(_gpus(g) * int(g.get("minReplicas", g.get("replicas", 1))) for g in workers)
    at_most = sum(_gpus(g) * int(g.get("maxReplicas", g.get("replicas", 1))) for g in workers)
    per_card = min(_gpus(g) for g in gpu_groups)
    for dep in _deployments():
        assert dep.get("ray_actor_options", {}).get("num_gpus", 0) <= per_card, dep["name"]
    need_min, need_max = _need("num_gpus", "min"), _need("num_gpus", "max")
    assert need_min > 0
    assert need_min <= at_least + 1e-9, (need_min, at_least)
    assert need_max <= at_most + 1e-9, (need_max, at_most)
    if need_max > at_least + 1e-9:
        assert cluster.get("enableInTreeAutoscaling") is True, (
            "the maximum replicas need more GPU pods than are always up, "
            "but the cluster cannot add pods"
        )


def test_the_pods_have_the_cpus_the_replicas_need() -> None:
    cluster = _cluster()
    groups = [
        (cluster["headGroupSpec"], 1),
        *((g, g["maxReplicas"]) for g in cluster["workerGroupSpecs"]),
    ]
    cpus = [_cpus(_ray_container(g)["resources"]["limits"]["cpu"]) for g, _ in groups]
    for dep in _deployments():
        need = float(dep.get("ray_actor_options", {}).get("num_cpus", 1))
        assert any(need <= c for c in cpus), f"{dep['name']} needs {need} CPUs, more than a pod"
    capacity = sum(c * int(n) for c, (_, n) in zip(cpus, groups, strict=True))
    assert _need("num_cpus", "max") <= capacity


def test_model_paths_are_on_the_models_volume_of_the_gpu_workers() -> None:
    (app,) = _serve_config()["applications"]
    settings = app["args"]["settings"]
    paths = [
        settings["ethostral"]["base_model"],
        settings["ethostral"]["adapter"],
        settings["diarizer"]["pyannote_pipeline"],
    ]
    assert all(p.startswith(MODELS_MOUNT + "/") for p in paths), paths
    for group in _cluster()["workerGroupSpecs"]:
        if _gpus(group) == 0:
            continue
        pod = group["template"]["spec"]
        mounts = {m["mountPath"]: m["name"] for m in _ray_container(group)["volumeMounts"]}
        assert MODELS_MOUNT in mounts, group["groupName"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == mounts[MODELS_MOUNT]]
        assert volume["persistentVolumeClaim"]["claimName"]


def test_every_pod_gets_the_shared_redis_from_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded Redis is refused on a multi-node cluster: each pod must get
    ETHOSTRAL_REDIS__URL, from a Secret (it may hold a password)."""
    cluster = _cluster()
    for group in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]:
        env = {e["name"]: e for e in _ray_container(group).get("env", [])}
        assert "secretKeyRef" in env["ETHOSTRAL_REDIS__URL"]["valueFrom"]
    (app,) = _serve_config()["applications"]
    # With the variable set as in the pods, the ingress resolves the shared Redis on a
    # cluster of several nodes instead of refusing to start.
    from ethostral_serve.settings import Settings

    for name in list(os.environ):
        if name.upper().startswith("ETHOSTRAL_REDIS"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ETHOSTRAL_REDIS__URL", "redis://:secret@redis.example:6379/0")
    settings = Settings(**app["args"]["settings"])
    url, embedded = resolve_redis_url(settings, count_nodes=lambda: 3)
    assert (url, embedded) == ("redis://:secret@redis.example:6379/0", None)


def test_every_pod_runs_one_image_with_the_pinned_ray() -> None:
    import ray

    cluster = _cluster()
    assert cluster["rayVersion"] == ray.__version__
    images = {
        _ray_container(g)["image"] for g in [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
    }
    assert len(images) == 1, images
