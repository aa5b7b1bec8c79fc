"""Backends that forward to Ray Serve deployments, so ``compose.transcribe`` runs as is.

They block on ``DeploymentResponse.result()`` and must be called from a worker thread
(the ingress runs the pipeline with ``asyncio.to_thread``), never on the event loop.
ASR windows and emotion inputs are sent as separate calls, all in flight at once, so
the model deployment's ``@serve.batch`` methods can batch them with other requests'.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.embedded import emotion_inputs
from ethostral_serve.backends.whisper import transcript_from_windows
from ethostral_serve.errors import UnsupportedLanguageError
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionResult,
    Span,
    SpeakerTurn,
    Transcript,
    WindowResult,
)


@dataclass(frozen=True)
class ModelInfo:
    """What the ingress needs to know about the model deployment's model."""

    languages: tuple[str, ...]
    multilingual: bool
    reads_encoder_states: bool


@dataclass(frozen=True)
class WindowJob:
    """One ASR window for the batched ``transcribe_window`` method."""

    audio: np.ndarray
    language: str | None


def check_language(language: str | None, languages: Sequence[str]) -> str | None:
    """A supported, normalised language code (``None``: detect)."""
    if language is None:
        return None
    code = language.strip().lower()
    if code not in languages:
        raise UnsupportedLanguageError(
            f"language {language!r} is not supported by the ASR model; "
            f"use one of: {', '.join(languages)}"
        )
    return code


class RemoteVad:
    """``VadBackend`` over the VAD deployment."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions, computed by the VAD deployment."""
        return list(self._handle.speech_regions.remote(samples).result())


class RemoteDiarizer:
    """``DiarizerBackend`` over the Diarizer deployment."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle

    def diarize(self, samples: np.ndarray, regions: Sequence[Span]) -> list[SpeakerTurn]:
        """Speaker turns, computed by the Diarizer deployment."""
        return list(self._handle.diarize.remote(samples, list(regions)).result())


class RemoteSpeechModel:
    """``SpeechModel`` over the EthostralModel deployment's batched methods."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self._info: ModelInfo | None = None

    @property
    def info(self) -> ModelInfo:
        """The deployment's model description (fetched once)."""
        if self._info is None:
            self._info = self._handle.info.remote().result()
        return self._info

    def check_language(self, language: str | None) -> str | None:
        """Validate against the deployment's language list."""
        return check_language(language, self.info.languages)

    def transcribe(
        self, samples: np.ndarray, chunks: Sequence[Chunk], language: str | None
    ) -> Transcript:
        """Send every window as its own call; the first ones detect the language if needed."""
        windows = [c.samples(samples, SAMPLE_RATE) for c in chunks]
        results: list[WindowResult | None] = [None] * len(windows)
        i = 0
        while language is None and i < len(windows):
            first: WindowResult = self._handle.transcribe_window.remote(
                WindowJob(windows[i], None)
            ).result()
            results[i] = first
            language = first.language
            i += 1
        pending = [
            (j, self._handle.transcribe_window.remote(WindowJob(windows[j], language)))
            for j in range(i, len(windows))
        ]
        for j, response in pending:
            results[j] = response.result()
        done = [r if r is not None else WindowResult.empty(language) for r in results]
        return transcript_from_windows(chunks, done, self.info.multilingual)

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult]:
        """Send every segment as its own call to the batched emotion method."""
        inputs = emotion_inputs(samples, transcript, spans, self.info.reads_encoder_states)
        pending = [self._handle.classify_segment.remote(x) for x in inputs]
        return [response.result() for response in pending]
