"""The Serve application builder: ``serve run serve_config.yaml`` calls :func:`build_app`."""

# No ``from __future__ import annotations``: Ray Serve reads the builder's annotation at
# run time to turn the config's ``args`` into an ``AppArgs``.
from typing import Any

from pydantic import BaseModel, Field
from ray.serve import Application

from ethostral_serve.serve.deployments import VAD, Diarizer, EthostralModel, Ingress, settings_from


class AppArgs(BaseModel):
    """Typed builder arguments (the ``args:`` of an application in a Serve config)."""

    settings: dict[str, Any] = Field(
        default_factory=dict,
        description="overrides of ethostral_serve.settings.Settings, nested like the "
        "environment: {'asr': {'model': 'tiny.en'}, 'redis': {'url': 'redis://...'}}",
    )


def build_app(args: AppArgs) -> Application:
    """Bind the graph: VAD, Diarizer and EthostralModel handles into the ingress."""
    settings_from(args.settings)  # fail at deploy time on a bad override, not in replicas
    overrides = args.settings
    return Ingress.bind(
        VAD.bind(overrides),
        Diarizer.bind(overrides),
        EthostralModel.bind(overrides),
        overrides,
    )
