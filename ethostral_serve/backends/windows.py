"""What every windowed speech model shares: joining per-window results into one
transcript, and giving each segment its emotion.

A segment's emotion is the most confident emotion the model wrote inline inside it
(Ethostral's tags), else the one still in force from earlier in the same window; a
segment without either is classified from what the emotion model reads: the ASR
pass's encoder frames inside it (the embedded Whisper) or its audio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.errors import UnknownAdapterError, UnsupportedLanguageError
from ethostral_serve.languages import requested_language
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionInput,
    EmotionResult,
    Span,
    TimedEmotion,
    Transcript,
    WindowResult,
    WordTiming,
)

FRAME_S = 0.02  # one Whisper encoder frame covers 20 ms
MAX_WINDOW_S = 30.0  # the longest audio one ASR window holds
MIN_WINDOW_SAMPLES = SAMPLE_RATE // 10  # shorter windows hold no word and are not read

Classify = Callable[[list[EmotionInput]], list[EmotionResult]]


@dataclass
class EncoderStates:
    """Whisper encoder frames of every window, with each frame's original time (s)."""

    frames: np.ndarray  # (n, d) float16
    times: np.ndarray  # (n,) float64, sorted

    def between(self, start: float, end: float) -> np.ndarray:
        """Frames whose centre lies in ``[start, end]`` (the nearest one if none)."""
        if len(self.times) == 0:
            return np.zeros((0, self.frames.shape[1] if self.frames.ndim == 2 else 0))
        lo, hi = np.searchsorted(self.times, [start, end], side="left")
        if hi <= lo:
            nearest = int(np.clip(lo, 0, len(self.times) - 1))
            return self.frames[nearest : nearest + 1]
        return self.frames[lo:hi]


def check_language(language: str | None, languages: Sequence[str]) -> str | None:
    """A supported, normalised language code; ``None``, ``""`` and ``"auto"`` mean detect."""
    code = requested_language(language)
    if code is None:
        return None
    if code not in languages:
        raise UnsupportedLanguageError(
            f"language {language!r} is not supported by the ASR model; "
            f"use one of: {', '.join(languages)}"
        )
    return code


def check_adapter(adapter: str | None, adapters: Sequence[str]) -> str | None:
    """``adapter`` if the model has it; None and ``""`` mean the model's default."""
    if not adapter:
        return None
    if adapter not in adapters:
        known = ", ".join(adapters) if adapters else "this speech model has no named adapters"
        raise UnknownAdapterError(f"unknown adapter {adapter!r}; available: {known}")
    return adapter


def transcript_from_windows(
    chunks: Sequence[Chunk], results: Sequence[WindowResult], multilingual: bool
) -> Transcript:
    """Join per-window results into one transcript on the original timeline.

    The language is the first window's that has one (detected or given); with no
    window recognised it is ``und`` (``en`` for an English-only model).
    """
    words: list[WordTiming] = []
    emotions: list[TimedEmotion] = []
    frames: list[np.ndarray] = []
    times: list[np.ndarray] = []
    language, probability = None, 1.0
    for chunk, result in zip(chunks, results, strict=True):
        if language is None and result.language is not None:
            language, probability = result.language, result.language_probability
        for w in result.words:
            start, end = chunk.span_to_original(w.start, w.end)
            words.append(WordTiming(w.text, start, end, float(w.probability)))
        emotions += [
            TimedEmotion(chunk.to_original(e.time), e.emotion, chunk.to_original(e.until))
            for e in result.emotions
        ]
        if len(result.frames):
            frames.append(result.frames)
            times.append(
                np.array(
                    [chunk.to_original((j + 0.5) * FRAME_S) for j in range(len(result.frames))]
                )
            )
    if language is None:
        language = "und" if multilingual else "en"
    all_frames = np.concatenate(frames) if frames else np.zeros((0, 0), np.float16)
    all_times = np.concatenate(times) if times else np.zeros(0)
    order = np.argsort(all_times, kind="stable")
    return Transcript(
        language,
        probability,
        words,
        EncoderStates(all_frames[order], all_times[order]),
        sorted(emotions, key=lambda e: e.time),
    )


def inline_emotion(
    emotions: Sequence[TimedEmotion], start: float, end: float
) -> EmotionResult | None:
    """The inline emotion of ``[start, end]``: the most confident one written inside it
    (the first on ties); else the one in force at ``start`` (the last written before it
    whose text runs on past ``start``); else None. ``emotions`` are sorted by time."""
    best: EmotionResult | None = None
    for e in emotions:
        if start <= e.time <= end and (best is None or e.emotion.confidence > best.confidence):
            best = e.emotion
    if best is None:
        before = [e for e in emotions if e.time < start]
        if before and before[-1].until > start:
            best = before[-1].emotion
    return best


def emotion_inputs(
    samples: np.ndarray, transcript: Transcript, spans: Sequence[Span], from_states: bool
) -> list[EmotionInput]:
    """Per span, the ASR's encoder frames inside it (``from_states``) or its audio."""
    if from_states and isinstance(transcript.state, EncoderStates):
        return [EmotionInput(frames=transcript.state.between(s.start, s.end)) for s in spans]
    out = []
    for s in spans:
        lo = int(s.start * SAMPLE_RATE)
        hi = int(min(s.end, s.start + MAX_WINDOW_S) * SAMPLE_RATE)
        out.append(EmotionInput(audio=samples[lo : max(hi, lo + SAMPLE_RATE // 10)]))
    return out


def span_emotions(
    samples: np.ndarray,
    transcript: Transcript,
    spans: Sequence[Span],
    reads_states: bool,
    classify: Classify | None,
) -> list[EmotionResult | None]:
    """One emotion per span: its inline emotion, else ``classify`` (one call for all the
    spans that need it); None where neither gives one."""
    out: list[EmotionResult | None] = [
        inline_emotion(transcript.emotions, s.start, s.end) for s in spans
    ]
    todo = [i for i, e in enumerate(out) if e is None]
    if classify is not None and todo:
        inputs = emotion_inputs(samples, transcript, [spans[i] for i in todo], reads_states)
        for i, result in zip(todo, classify(inputs), strict=True):
            out[i] = result
    return out
