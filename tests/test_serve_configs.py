"""The Serve config files, read the way ``serve run`` / ``serve deploy`` read them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = [REPO / "serve_config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
DEPLOYMENTS = {"Ingress", "VAD", "Diarizer", "EthostralModel"}


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
