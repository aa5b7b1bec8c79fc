"""Inference Endpoints custom handler: Ethostral (Voxtral + LoRA) for ethostral-serve's
``speech_model: endpoint``.

Inference Endpoints imports this file from the model repository and builds
``EndpointHandler(path)`` with the repository's directory, then calls it once per
request with the JSON body. ``stage.py`` copies it, ``requirements.txt`` and the
``ethostral_serve`` package into a clone of the repository; README.md says the rest.
The request and answer format is in ``ethostral_serve/backends/endpoint/wire.py``.
"""

from __future__ import annotations

from typing import Any

from ethostral_serve.backends.endpoint.handler import EthostralHandler


class EndpointHandler:
    """Loads Voxtral and the LoRA adapter from ``path`` (or ``ETHOSTRAL_ETHOSTRAL__*``)."""

    def __init__(self, path: str = "") -> None:
        self.handler = EthostralHandler(path)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data["inputs"]``: a batch of windows; ``data.get("parameters")``: e.g.
        ``max_new_tokens``. Answers ``{"results": [...]}``, one per window."""
        return self.handler(data)
