"""Ethostral on a Hugging Face Inference Endpoint.

``wire``: the JSON both sides exchange; ``client``: batches of windows sent there with
retries, backoff and a concurrency limit; ``speech``: the service's speech model over it
(``speech_model: endpoint``); ``handler``: the endpoint's side, which
``deploy/hf-endpoint/handler.py`` wraps for Inference Endpoints.
"""

from ethostral_serve.backends.endpoint.speech import EndpointSpeechModel

__all__ = ["EndpointSpeechModel"]
