"""The Protocols every model backend implements. The pipeline only sees these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np

from ethostral_serve.pipeline.types import Chunk, EmotionResult, Span, SpeakerTurn, Transcript


@runtime_checkable
class VadBackend(Protocol):
    """Finds speech in 16 kHz mono audio."""

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        """Speech regions, sorted and non-overlapping, in seconds."""
        ...


@runtime_checkable
class DiarizerBackend(Protocol):
    """Says who spoke when."""

    def diarize(self, samples: np.ndarray, regions: Sequence[Span]) -> list[SpeakerTurn]:
        """Speaker turns over the speech ``regions`` of 16 kHz mono ``samples``.

        Turns are sorted and do not overlap; speakers are named ``s0``, ``s1``, ... in
        order of first appearance.
        """
        ...


@runtime_checkable
class SpeechModel(Protocol):
    """Speech recognition plus emotion recognition."""

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language code; raise ``UnsupportedLanguageError``."""
        ...

    def transcribe(
        self, samples: np.ndarray, chunks: Sequence[Chunk], language: str | None
    ) -> Transcript:
        """Words with times on the original timeline; detects the language when ``None``."""
        ...

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult]:
        """One emotion per span, using what ``transcribe`` kept in ``transcript.state``."""
        ...
