"""The ports of the pure pipeline: the Protocols every model backend implements.

The pipeline (``compose``, ``streaming``) sees only these; backends in
``ethostral_serve/backends/`` implement them, and the Serve layer forwards them to
deployments.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionInput,
    EmotionResult,
    Span,
    SpeakerCount,
    SpeakerTurn,
    Transcript,
    UtteranceResult,
    WindowResult,
)


@runtime_checkable
class VadBackend(Protocol):
    """Finds speech in 16 kHz mono audio."""

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions, sorted and non-overlapping, in seconds."""
        ...


@runtime_checkable
class DiarizerBackend(Protocol):
    """Says who spoke when."""

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        """Speaker turns over the speech ``regions`` of 16 kHz mono ``samples``.

        Turns are sorted by start; turns of two speakers may overlap where both talk at
        once (backends that cannot tell give one speaker at a time). Speakers are named
        ``s0``, ``s1``, ... in order of first appearance. ``speakers`` is the count a
        request gave (exact, or bounds), if any.
        """
        ...


@runtime_checkable
class SpeechModel(Protocol):
    """Speech recognition plus emotion recognition.

    ``languages``: the codes :meth:`check_language` accepts; ``adapters``: the names
    :meth:`check_adapter` accepts (the API documents both).
    """

    languages: tuple[str, ...]
    adapters: tuple[str, ...]

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language code; raise ``UnsupportedLanguageError``."""
        ...

    def check_adapter(self, adapter: str | None) -> str | None:
        """A named adapter the model has (None: its default); else ``UnknownAdapterError``."""
        ...

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        adapter: str | None = None,
    ) -> Transcript:
        """Words with times on the original timeline; detects the language when ``None``.
        ``adapter`` names a fine-tune of the model (None: its default)."""
        ...

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult | None]:
        """One emotion per span, from what ``transcribe`` kept in ``transcript`` (inline
        emotions, ``state``); None for a span the model can tell nothing about."""
        ...


@runtime_checkable
class WindowedSpeechModel(SpeechModel, Protocol):
    """A speech model whose work splits into units that batch across requests.

    ASR runs on independent windows (:meth:`transcribe_windows`) and emotion on
    independent segment inputs (:meth:`classify`); the serving layer batches both.
    ``detects_language``: a window sent without a language comes back with one;
    ``reads_encoder_states``: emotion inputs are the ASR's encoder frames (else audio);
    ``classifies``: :meth:`classify` works (else only inline emotions exist).
    """

    multilingual: bool
    detects_language: bool
    reads_encoder_states: bool
    classifies: bool

    def transcribe_windows(
        self,
        windows: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[WindowResult]:
        """Recognise windows of at most 30 s; a ``None`` language is detected; each
        window may name its adapter."""
        ...

    def classify(self, inputs: Sequence[EmotionInput]) -> list[EmotionResult]:
        """One emotion per segment input."""
        ...

    def partial_text(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of a live utterance (at most 30 s): text and language."""
        ...

    def partial_texts(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[tuple[str, str]]:
        """Drafts of several live utterances (of any streams) at once, as
        :meth:`partial_text` writes each: text and language, in order. The serving layer
        batches drafts across streams through it; a model may draft them in one pass."""
        ...


@runtime_checkable
class StreamBackends(Protocol):
    """What a live stream needs: streaming VAD, drafts, finals and speaker embeddings.

    Every method blocks; the WebSocket handler calls them from worker threads.
    """

    def new_vad_state(self) -> Any:
        """A fresh per-stream VAD state."""
        ...

    def vad_step(self, samples: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """Speech probabilities of the new whole 512-sample frames, and the next state."""
        ...

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language code; raise ``UnsupportedLanguageError``."""
        ...

    def check_adapter(self, adapter: str | None) -> str | None:
        """A named adapter the model has (None: its default); else ``UnknownAdapterError``."""
        ...

    def partial(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of an utterance so far: text and language."""
        ...

    def finals(
        self,
        utterances: Sequence[np.ndarray],
        language: str | None,
        emotion: bool,
        adapter: str | None = None,
    ) -> list[UtteranceResult]:
        """Finished utterances of one stream (at most 30 s together) recognised in full,
        each with its emotion when asked for; read together, they share one ASR pass."""
        ...

    def embed(self, audio: np.ndarray) -> np.ndarray | None:
        """A unit-length speaker embedding of the utterance (None when too short)."""
        ...

    def diarize(
        self, samples: np.ndarray, regions: Sequence[Span], speakers: SpeakerCount | None
    ) -> list[SpeakerTurn]:
        """Speaker turns of a whole finished stream, as an upload gets them ([] when
        the service runs no diarizer)."""
        ...
