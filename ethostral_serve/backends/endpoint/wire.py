"""The JSON the service and its Inference Endpoint handler exchange; both sides use these
functions, so the format has one definition.

Request (``POST``, ``Content-Type: application/json``), following the Inference
Endpoints convention of ``inputs`` and optional ``parameters``::

    {"inputs": {"audio": ["<base64>", ...], "encoding": "s16le", "sampling_rate": 16000,
                "languages": ["en", null, ...], "adapters": [null, "calm", ...]},
     "parameters": {"max_new_tokens": 448}}

``audio[i]`` is window i (at most :data:`MAX_WINDOWS` of them), mono 16 kHz PCM of at
most 30 s, base64-encoded: little-endian 16-bit integers at full scale 32768 (``s16le``)
or 32-bit floats (``f32le``).
``languages`` (null: Voxtral guesses) and ``adapters`` (null: the endpoint's default
adapter) hold one entry per window and may be left out (all null); so may
``parameters`` (``max_new_tokens``: the endpoint's own setting).

Answer, one result per window in order::

    {"results": [{"raw": "[angry] stop that", "token_spans": [[0, 1], [1, 2], ...],
                  "token_probabilities": [0.98, 0.91, ...]}, ...]}

``raw`` is the transcript as the model wrote it, tags included; ``token_spans[k]`` is the
character span in ``raw`` of the k-th generated token and ``token_probabilities[k]`` the
probability the model gave it. The client reads tags and emotions from these exactly as
the local model does (:func:`~ethostral_serve.backends.ethostral.tagged_result`).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.ethostral import EthostralResult, tagged_result
from ethostral_serve.backends.windows import MAX_WINDOW_S

Encoding = Literal["s16le", "f32le"]
SAMPLE_TYPES: dict[str, str] = {"s16le": "<i2", "f32le": "<f4"}
S16_SCALE = 32768.0
MAX_WINDOW_SAMPLES = round(MAX_WINDOW_S * SAMPLE_RATE)
MAX_NEW_TOKENS = 4096
# The most windows one request may hold (EndpointSettings.batch_size's maximum): the
# endpoint generates for all of them at once, so one request must not take its GPU memory.
MAX_WINDOWS = 64


class MalformedAnswerError(ValueError):
    """The endpoint's answer is not the results this format describes."""


@dataclass(frozen=True)
class WindowBatch:
    """A request, decoded: the windows (float32), and per window its language and adapter."""

    audios: list[np.ndarray]
    languages: list[str | None]
    adapters: list[str | None]
    max_new_tokens: int | None = None


def encode_audio(samples: np.ndarray, encoding: Encoding) -> str:
    """16 kHz mono float samples as base64 PCM (``s16le`` clips to [-1, 1))."""
    x = np.asarray(samples, dtype=np.float32)
    if encoding == "s16le":
        pcm = np.clip(np.round(x * S16_SCALE), -S16_SCALE, S16_SCALE - 1).astype("<i2")
    else:
        pcm = x.astype("<f4")
    return base64.b64encode(pcm.tobytes()).decode("ascii")


def decode_audio(text: object, encoding: Encoding, where: str) -> np.ndarray:
    """Base64 PCM back to float32 samples; ``ValueError`` saying what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"{where} must be a base64 string")
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"{where} is not valid base64") from None
    dtype = np.dtype(SAMPLE_TYPES[encoding])
    if len(raw) % dtype.itemsize:
        raise ValueError(f"{where}: {len(raw)} bytes is not a whole number of {encoding} samples")
    if len(raw) // dtype.itemsize > MAX_WINDOW_SAMPLES:
        raise ValueError(f"{where} is longer than {MAX_WINDOW_S:g} s at {SAMPLE_RATE} Hz")
    samples = np.frombuffer(raw, dtype=dtype).astype(np.float32)
    if encoding == "s16le":
        return samples / np.float32(S16_SCALE)
    if not np.isfinite(samples).all():
        raise ValueError(f"{where} holds NaN or infinite samples")
    return samples


def encode_request(
    audios: Sequence[np.ndarray],
    languages: Sequence[str | None],
    adapters: Sequence[str | None],
    max_new_tokens: int | None = None,
    encoding: Encoding = "s16le",
) -> dict[str, Any]:
    """The request body for a batch of windows."""
    if not len(audios) == len(languages) == len(adapters):
        raise ValueError("one language and one adapter (or None) per window")
    body: dict[str, Any] = {
        "inputs": {
            "audio": [encode_audio(a, encoding) for a in audios],
            "encoding": encoding,
            "sampling_rate": SAMPLE_RATE,
            "languages": list(languages),
            "adapters": list(adapters),
        }
    }
    if max_new_tokens is not None:
        body["parameters"] = {"max_new_tokens": int(max_new_tokens)}
    return body


def decode_request(data: object) -> WindowBatch:
    """A request body as the handler receives it; ``ValueError`` saying what is wrong."""
    if not isinstance(data, Mapping) or not isinstance(data.get("inputs"), Mapping):
        raise ValueError('the body must be a JSON object with an "inputs" object')
    inputs: Mapping[str, Any] = data["inputs"]
    encoding = inputs.get("encoding", "s16le")
    if encoding not in SAMPLE_TYPES:
        raise ValueError(f"inputs.encoding {encoding!r}: use one of {', '.join(SAMPLE_TYPES)}")
    rate = inputs.get("sampling_rate", SAMPLE_RATE)
    if rate != SAMPLE_RATE:
        raise ValueError(f"inputs.sampling_rate {rate!r}: only {SAMPLE_RATE} Hz mono is accepted")
    audio = inputs.get("audio")
    if not isinstance(audio, list) or not audio:
        raise ValueError("inputs.audio must be a non-empty list of base64 windows")
    if len(audio) > MAX_WINDOWS:
        raise ValueError(
            f"inputs.audio holds {len(audio)} windows; a request may hold at most "
            f"{MAX_WINDOWS} (send them in several requests)"
        )
    audios = [decode_audio(a, encoding, f"inputs.audio[{i}]") for i, a in enumerate(audio)]
    languages = _names(inputs.get("languages"), len(audios), "inputs.languages")
    adapters = _names(inputs.get("adapters"), len(audios), "inputs.adapters")
    parameters = data.get("parameters") or {}
    if not isinstance(parameters, Mapping):
        raise ValueError("parameters must be a JSON object")
    tokens = parameters.get("max_new_tokens")
    if tokens is not None and (
        isinstance(tokens, bool) or not isinstance(tokens, int) or not 1 <= tokens <= MAX_NEW_TOKENS
    ):
        raise ValueError(f"parameters.max_new_tokens must be an integer from 1 to {MAX_NEW_TOKENS}")
    return WindowBatch(audios, languages, adapters, tokens)


def _names(value: object, count: int, where: str) -> list[str | None]:
    if value is None:
        return [None] * count
    if not isinstance(value, list) or len(value) != count:
        raise ValueError(f"{where} must be a list with one entry per window ({count})")
    if not all(v is None or isinstance(v, str) for v in value):
        raise ValueError(f"{where} entries must be strings or null")
    return [v or None for v in value]


def encode_results(results: Sequence[EthostralResult]) -> dict[str, Any]:
    """The answer body: per window, the raw transcript and its tokens' spans and
    probabilities."""
    return {
        "results": [
            {
                "raw": r.raw,
                "token_spans": [list(span) for span in r.token_spans],
                "token_probabilities": list(r.token_probabilities),
            }
            for r in results
        ]
    }


def decode_results(payload: object, count: int) -> list[EthostralResult]:
    """The endpoint's answer for ``count`` windows, read as the local model reads its
    own output; ``MalformedAnswerError`` saying what is wrong."""
    if not isinstance(payload, Mapping) or not isinstance(payload.get("results"), list):
        raise MalformedAnswerError('the answer is not a JSON object with a "results" list')
    results = payload["results"]
    if len(results) != count:
        raise MalformedAnswerError(f"{len(results)} results for {count} windows")
    return [_result(r, f"results[{i}]") for i, r in enumerate(results)]


def _result(item: object, where: str) -> EthostralResult:
    if not isinstance(item, Mapping):
        raise MalformedAnswerError(f"{where} is not an object")
    raw, spans, probs = item.get("raw"), item.get("token_spans"), item.get("token_probabilities")
    if not isinstance(raw, str):
        raise MalformedAnswerError(f"{where}.raw is not a string")
    if not isinstance(spans, list) or not isinstance(probs, list) or len(spans) != len(probs):
        raise MalformedAnswerError(
            f"{where}: token_spans and token_probabilities must be lists of equal length"
        )
    for span in spans:
        if not (
            isinstance(span, list)
            and len(span) == 2
            and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
            and 0 <= span[0] <= span[1] <= len(raw)
        ):
            raise MalformedAnswerError(f"{where}: token span {span!r} is not inside the text")
    for p in probs:
        # (NaN fails the range check too)
        if isinstance(p, bool) or not isinstance(p, int | float) or not 0.0 <= p <= 1.0:
            raise MalformedAnswerError(f"{where}: token probability {p!r} is not in [0, 1]")
    return tagged_result(raw, [(lo, hi) for lo, hi in spans], probs)
