"""Live-stream backends in this process, over the loaded models."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.vad.silero_stream import SileroStreamingVad, VadStreamState
from ethostral_serve.backends.windows import FRAME_S, MAX_WINDOW_S, Classify, inline_emotion
from ethostral_serve.pipeline.ports import DiarizerBackend, WindowedSpeechModel
from ethostral_serve.pipeline.types import (
    EmotionInput,
    EmotionResult,
    Span,
    SpeakerCount,
    SpeakerTurn,
    TimedEmotion,
    UtteranceResult,
    WindowResult,
    WordTiming,
)

MAX_WINDOW_SAMPLES = round(MAX_WINDOW_S * SAMPLE_RATE)


class StreamModel(Protocol):
    """What live streams need of a speech model, in this process or behind a deployment."""

    @property
    def reads_encoder_states(self) -> bool: ...

    @property
    def classifies(self) -> bool: ...

    def check_language(self, language: str | None) -> str | None: ...

    def check_adapter(self, adapter: str | None) -> str | None: ...

    def partial_text(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]: ...

    def transcribe_windows(
        self,
        windows: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[WindowResult]: ...

    def classify(self, inputs: Sequence[EmotionInput]) -> list[EmotionResult]: ...


class ModelStreamBackends:
    """The speech-model half of ``StreamBackends`` (checks, drafts, finals) over
    ``self.model``; subclasses add the VAD steps and speaker embeddings."""

    model: StreamModel

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language code."""
        return self.model.check_language(language)

    def check_adapter(self, adapter: str | None) -> str | None:
        """A named adapter of the model (None: its default)."""
        return self.model.check_adapter(adapter)

    def partial(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of the utterance so far."""
        return self.model.partial_text(audio[-MAX_WINDOW_SAMPLES:], language, adapter)

    def finals(
        self,
        utterances: Sequence[np.ndarray],
        language: str | None,
        emotion: bool,
        adapter: str | None = None,
    ) -> list[UtteranceResult]:
        """Utterances in full quality, read as one ASR window, each with its emotion.

        Read together, a recogniser may skip a short utterance between others (its words
        never come); each utterance that comes back without words is then read again
        alone, so joining finals under load never loses what was said.
        """
        (result,) = self.model.transcribe_windows(
            [join_utterances(utterances)], [language], [adapter]
        )
        parts = split_window(result, [len(u) for u in utterances])
        lost = [i for i, p in enumerate(parts) if not p.words] if len(parts) > 1 else []
        if lost:
            alone = self.model.transcribe_windows(
                [utterances[i][:MAX_WINDOW_SAMPLES] for i in lost],
                [language] * len(lost),
                [adapter] * len(lost),
            )
            for i, window in zip(lost, alone, strict=True):
                (parts[i],) = split_window(window, [len(utterances[i])])
        classify = self.model.classify if emotion and self.model.classifies else None
        return parts_results(parts, utterances, self.model.reads_encoder_states, classify, emotion)


class LocalStreamBackends(ModelStreamBackends):
    """``StreamBackends`` over in-process models."""

    def __init__(
        self, vad: SileroStreamingVad, model: WindowedSpeechModel, diarizer: DiarizerBackend | None
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

    def embed(self, audio: np.ndarray) -> np.ndarray | None:
        """A speaker embedding of the utterance (None when the diarizer makes none)."""
        embed = getattr(self.diarizer, "embed_utterance", None)
        return None if embed is None else embed(audio)

    def diarize(
        self, samples: np.ndarray, regions: Sequence[Span], speakers: SpeakerCount | None
    ) -> list[SpeakerTurn]:
        """Speaker turns of a whole stream from the in-process diarizer ([] without one)."""
        if self.diarizer is None:
            return []
        return self.diarizer.diarize(samples, regions, speakers)


def join_utterances(utterances: Sequence[np.ndarray]) -> np.ndarray:
    """Utterances back to back as one ASR window (cut at the window's 30 s)."""
    return np.concatenate(utterances)[:MAX_WINDOW_SAMPLES]


def parts_results(
    parts: Sequence[WindowResult],
    utterances: Sequence[np.ndarray],
    reads_states: bool,
    classify: Classify | None,
    emotion: bool = True,
) -> list[UtteranceResult]:
    """Per-utterance results from each utterance's own part of a window (see
    :func:`split_window`), with their emotion when ``emotion``: the utterance's inline
    emotion, else ``classify``'s (when given)."""
    feelings: list[EmotionResult | None] = [None] * len(parts)
    if emotion:
        feelings = [inline_emotion(p.emotions, 0.0, float("inf")) for p in parts]
    todo = [i for i, f in enumerate(feelings) if emotion and f is None]
    if classify is not None and todo:
        inputs = [utterance_emotion_input(parts[i], utterances[i], reads_states) for i in todo]
        for i, result in zip(todo, classify(inputs), strict=True):
            feelings[i] = result
    return [
        UtteranceResult(p.words, p.language or "und", f, p.language_ranking)
        for p, f in zip(parts, feelings, strict=True)
    ]


def split_window(result: WindowResult, lengths: Sequence[int]) -> list[WindowResult]:
    """Split the result of utterances read back to back as one window, one per utterance.

    ``lengths`` are the utterances' sample counts in window order. A word goes to the
    utterance holding its midpoint, an inline emotion to the one holding its time; times
    and encoder frames become the utterance's own.
    """
    frame = round(FRAME_S * SAMPLE_RATE)  # samples per encoder frame
    edges = [0, *np.cumsum(lengths).tolist()]
    parts = []
    for i in range(len(lengths)):
        lo, hi = edges[i], edges[i + 1]
        start, end = lo / SAMPLE_RATE, hi / SAMPLE_RATE
        last = i == len(lengths) - 1
        words = [
            WordTiming(
                w.text,
                min(max(0.0, w.start - start), end - start),
                min(max(0.0, w.end - start), end - start),
                w.probability,
            )
            for w in result.words
            if start <= (w.start + w.end) / 2 < end or (last and (w.start + w.end) / 2 >= end)
        ]
        frames = result.frames[lo // frame : -(-hi // frame)]
        emotions = [
            TimedEmotion(
                min(max(0.0, e.time - start), end - start),
                e.emotion,
                min(max(0.0, e.until - start), end - start),
            )
            for e in result.emotions
            if start <= e.time < end or (last and e.time >= end)
        ]
        parts.append(
            WindowResult(
                words,
                result.language,
                result.language_probability,
                frames,
                emotions,
                result.language_ranking,
            )
        )
    return parts


def utterance_emotion_input(
    result: WindowResult, audio: np.ndarray, reads_states: bool
) -> EmotionInput:
    """What the emotion model reads for a live utterance: its encoder frames or audio."""
    if reads_states and len(result.frames):
        return EmotionInput(frames=result.frames)
    return EmotionInput(audio=audio[:MAX_WINDOW_SAMPLES])
