"""cluster.yaml passes Ray's own cluster-launcher validation and fits configs/gpu.yaml."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

REPO = Path(__file__).resolve().parents[1]
GPU_CONFIG = "configs/gpu.yaml"


def _load() -> dict[str, Any]:
    return yaml.safe_load((REPO / "cluster.yaml").read_text())


def _ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What `ray up` does before touching the cloud: fill defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def _worker_types(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        name: spec
        for name, spec in config["available_node_types"].items()
        if name != config["head_node_type"]
    }


def _commands(config: dict[str, Any], *keys: str) -> str:
    return "\n".join(cmd for key in keys for cmd in config.get(key, []))


def test_cluster_yaml_passes_ray_validation() -> None:
    prepared = _ray_validate(_load())
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


@pytest.mark.parametrize(
    "breakage",
    [
        pytest.param(lambda c: c.update(not_a_ray_key=1), id="unknown-top-level-key"),
        pytest.param(lambda c: c.update(max_workers="two"), id="max-workers-not-int"),
        pytest.param(
            lambda c: c["available_node_types"]["gpu"]["resources"].update(GPU=0.5),
            id="fractional-node-gpu",
        ),
        pytest.param(
            lambda c: c["available_node_types"]["gpu"].pop("node_config"),
            id="node-type-without-node-config",
        ),
    ],
)
def test_broken_copies_fail_ray_validation(breakage: Any) -> None:
    config = _load()
    breakage(config)
    with pytest.raises(jsonschema.ValidationError):
        _ray_validate(config)


def test_min_workers_above_max_workers_fails() -> None:
    config = _load()
    config["max_workers"] = 0
    with pytest.raises(ValueError, match="max_workers"):
        _ray_validate(config)


def test_a_gpu_worker_type_is_always_up() -> None:
    config = _load()
    head = config["available_node_types"][config["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is meant to be a CPU node"
    gpu_types = [s for s in _worker_types(config).values() if s["resources"].get("GPU", 0) >= 1]
    assert gpu_types, "no worker node type declares a GPU"
    assert any(s.get("min_workers", 0) >= 1 for s in gpu_types)


def test_package_is_installed_from_the_synced_checkout_and_gpu_config_deployed() -> None:
    config = _load()
    mounts = config["file_mounts"]
    remote = next(r for r, local in mounts.items() if Path(local) == Path("."))
    assert f"pip install -e {remote}" in _commands(config, "setup_commands")
    head_start = _commands(config, "head_start_ray_commands")
    assert head_start.index("ray start --head") < head_start.index(f"serve deploy {remote}/")
    assert f"{remote}/{GPU_CONFIG}" in head_start
    assert (REPO / GPU_CONFIG).is_file()
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        start = _commands(config, key)
        assert "PYANNOTE_METRICS_ENABLED=0" in start, key
        assert "RAY_AUTH_MODE=disabled" not in start, key


def test_gpu_serve_config_fits_the_cluster() -> None:
    """Every replica fits on one node type, and all replicas fit in the largest cluster."""
    config = _load()
    serve = yaml.safe_load((REPO / GPU_CONFIG).read_text())
    nodes = config["available_node_types"]
    total = {"CPU": 0.0, "GPU": 0.0}
    for app in serve["applications"]:
        for dep in app.get("deployments", []):
            opts = dep.get("ray_actor_options", {})
            need = {"CPU": float(opts.get("num_cpus", 1)), "GPU": float(opts.get("num_gpus", 0))}
            assert any(
                all(need[r] <= spec["resources"].get(r, 0) for r in need) for spec in nodes.values()
            ), f"{dep['name']} needs {need}, more than any node type has"
            for r in total:
                total[r] += need[r] * dep.get("num_replicas", 1)
    capacity = {
        r: nodes[config["head_node_type"]]["resources"].get(r, 0)
        + sum(
            s["resources"].get(r, 0) * s.get("max_workers", config["max_workers"])
            for s in _worker_types(config).values()
        )
        for r in total
    }
    for r in total:
        assert total[r] <= capacity[r] + 1e-9, (r, total, capacity)
