"""Live-stream backends in this process, over the loaded embedded models."""

from __future__ import annotations

from typing import Any

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.embedded import EmbeddedSpeechModel
from ethostral_serve.backends.resemblyzer_diarizer import ResemblyzerDiarizer
from ethostral_serve.backends.silero_stream import SileroStreamingVad, VadStreamState
from ethostral_serve.backends.whisper import MAX_WINDOW_S
from ethostral_serve.pipeline.types import EmotionInput, UtteranceResult, WindowResult

MAX_WINDOW_SAMPLES = round(MAX_WINDOW_S * SAMPLE_RATE)


class LocalStreamBackends:
    """``StreamBackends`` over in-process models."""

    def __init__(
        self,
        vad: SileroStreamingVad,
        model: EmbeddedSpeechModel,
        diarizer: ResemblyzerDiarizer | None,
    ) -> None:
        self.vad = vad
        self.model = model
        self.diarizer = diarizer

    def new_vad_state(self) -> VadStreamState:
        """A fresh per-stream VAD state."""
        return VadStreamState()

    def vad_step(self, samples: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        """Probabilities of the new whole frames, and the next state."""
        ((probs, new_state),) = self.vad.step([(samples, state)])
        return probs, new_state

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language code."""
        return self.model.check_language(language)

    def partial(self, audio: np.ndarray, language: str | None) -> tuple[str, str]:
        """A quick draft of the utterance so far."""
        return self.model.partial_text(audio[-MAX_WINDOW_SAMPLES:], language)

    def final(self, audio: np.ndarray, language: str | None, emotion: bool) -> UtteranceResult:
        """The utterance in full quality, with its emotion."""
        (result,) = self.model.transcribe_windows([audio[:MAX_WINDOW_SAMPLES]], [language])
        feeling = None
        if emotion and self.model.classifier is not None:
            (feeling,) = self.model.classify(
                [utterance_emotion_input(result, audio, self.model.reads_encoder_states)]
            )
        return UtteranceResult(result.words, result.language or "und", feeling)

    def embed(self, audio: np.ndarray) -> np.ndarray | None:
        """A speaker embedding of the utterance."""
        return None if self.diarizer is None else self.diarizer.embed_utterance(audio)


def utterance_emotion_input(
    result: WindowResult, audio: np.ndarray, reads_states: bool
) -> EmotionInput:
    """What the emotion model reads for a live utterance: its encoder frames or audio."""
    if reads_states and len(result.frames):
        return EmotionInput(frames=result.frames)
    return EmotionInput(audio=audio[:MAX_WINDOW_SAMPLES])
