"""The endpoint's side: Ethostral (:class:`EthostralAsr`) answering requests in the
format of :mod:`.wire`. ``deploy/hf-endpoint/handler.py`` is the ``EndpointHandler``
Inference Endpoints loads; it wraps :class:`EthostralHandler`.

What loads comes from the ``ethostral`` section of the settings (``ETHOSTRAL_ETHOSTRAL__*``
variables on the endpoint), with the model repository directory filling what they leave
unset (:func:`repository_settings`).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ethostral_serve.backends.endpoint.wire import decode_request, encode_results
from ethostral_serve.backends.ethostral import EthostralAsr
from ethostral_serve.settings import EthostralSettings, Settings

log = logging.getLogger("ethostral_serve.endpoint")


def repository_settings(path: Path | None, section: EthostralSettings) -> EthostralSettings:
    """``section`` with the model repository at ``path`` (None: none) in the fields it
    leaves unset.

    - ``path`` holds a peft adapter (``adapter_config.json``): it is the adapter;
    - ``path`` holds a model (``config.json``) and no adapter: it is the base model;
    - ``path`` holds ``voxtral/`` and ``adapter/`` (the layout ``ethostral models pull``
      writes): the base model and the adapter.

    The device is ``cuda`` when a GPU is visible and ``ETHOSTRAL_ETHOSTRAL__DEVICE`` does
    not say otherwise.
    """
    given = section.model_fields_set
    update: dict[str, Any] = {}
    if path is not None and path.is_dir():
        if (path / "adapter_config.json").is_file():
            update["adapter"] = str(path)
        elif (path / "config.json").is_file():
            update["base_model"] = str(path)
        else:
            if (path / "voxtral" / "config.json").is_file():
                update["base_model"] = str(path / "voxtral")
            if (path / "adapter" / "adapter_config.json").is_file():
                update["adapter"] = str(path / "adapter")
    update = {k: v for k, v in update.items() if k not in given}
    if "device" not in given and _cuda_available():
        update["device"] = "cuda"
    return section.model_copy(update=update)


def _cuda_available() -> bool:
    import torch

    return bool(torch.cuda.is_available())


class EthostralHandler:
    """Loads Ethostral once; each call transcribes a batch of windows.

    ``path``: the model repository's directory ("": none); ``settings``: the
    ``ethostral`` section (default: from the environment).
    """

    def __init__(
        self, path: str | os.PathLike[str] = "", settings: EthostralSettings | None = None
    ):
        section = settings if settings is not None else Settings().ethostral
        self.settings = repository_settings(Path(path) if path else None, section)
        log.info(
            "loading Ethostral: base %s, adapter %s, on %s",
            self.settings.base_model,
            self.settings.adapter,
            self.settings.device,
        )
        self.asr = EthostralAsr(self.settings)

    def __call__(self, data: dict[str, Any]) -> dict[str, Any]:
        """``{"inputs": ..., "parameters": ...}`` → ``{"results": [...]}``. A malformed
        request raises ``ValueError``, an adapter the endpoint lacks
        ``UnknownAdapterError``; Inference Endpoints answers any error with a 400 that
        carries its message."""
        batch = decode_request(data)
        results = self.asr.transcribe_segments(
            batch.audios,
            [language.lower() if language else None for language in batch.languages],
            max_new_tokens=batch.max_new_tokens,
            adapters=batch.adapters,
        )
        return encode_results(results)
