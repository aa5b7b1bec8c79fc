"""The embedded default speech model: faster-whisper ASR + our emotion classifier.

Emotion reads the Whisper encoder states the ASR pass already computed. If the ASR
model's encoder is not the one the emotion model was trained on (e.g. ``tiny.en``),
a separate Whisper base encoder is loaded and run on each segment's audio instead.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from ethostral_serve.backends.whisper import WhisperAsr, load_drafter
from ethostral_serve.backends.windows import check_adapter, span_emotions
from ethostral_serve.pipeline import progress
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionInput,
    EmotionResult,
    Span,
    Transcript,
    WindowResult,
)
from ethostral_serve.settings import Settings

if TYPE_CHECKING:
    from ethostral_serve.backends.emotion import EmotionClassifier


class EmbeddedSpeechModel:
    """ASR + emotion from packaged models, on CPU."""

    def __init__(self, settings: Settings, with_emotion: bool = True) -> None:
        self.settings = settings
        self.asr = WhisperAsr(settings.asr, settings.cache_dir)
        self._drafter: WhisperAsr | None = None
        self._drafter_lock = threading.Lock()
        self.classifier: EmotionClassifier | None = None
        self._emotion_encoder: WhisperAsr | None = None
        if with_emotion:
            from ethostral_serve.backends.emotion import EmotionClassifier

            self.classifier = EmotionClassifier(settings.emotion)
            if not self.classifier.accepts(settings.asr.model):
                base = settings.asr.model_copy(update={"model": "base"})
                self._emotion_encoder = WhisperAsr(base, settings.cache_dir)

    adapters: tuple[str, ...] = ()  # Whisper here has no fine-tunes to choose from
    detects_language = True

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language code; raise ``UnsupportedLanguageError``."""
        return self.asr.check_language(language)

    def check_adapter(self, adapter: str | None) -> str | None:
        """None; naming an adapter is an ``UnknownAdapterError`` (there are none)."""
        return check_adapter(adapter, self.adapters)

    @property
    def languages(self) -> tuple[str, ...]:
        """Language codes the ASR model accepts."""
        return self.asr.languages

    @property
    def multilingual(self) -> bool:
        """Whether the ASR model detects and recognises several languages."""
        return self.asr.multilingual

    def settle_language(self, windows: Sequence[np.ndarray], candidates: Sequence[str]) -> str:
        """Of an unsure language vote's candidates, the one Whisper drafts best."""
        return self.asr.settle_language(windows, candidates)

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        adapter: str | None = None,
    ) -> Transcript:
        """Words on the original timeline, plus the encoder states for emotion."""
        self.check_adapter(adapter)
        return self.asr.transcribe(
            samples, chunks, language, progress=lambda done: progress.report("asr", done)
        )

    def partial_text(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of a live utterance: text and language (see :meth:`partial_texts`)."""
        return self.partial_texts([audio], [language], [adapter])[0]

    def partial_texts(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[tuple[str, str]]:
        """Quick drafts of several live utterances at once: text and language of each.

        The draft model (``stream.draft_model``) writes a draft when it knows the
        language (an English-only model drafts only streams known to be English);
        otherwise the ASR model does. Each model drafts its share in one batch.
        """
        if len(audios) != len(languages):
            raise ValueError("one language (or None) per utterance")
        for adapter in adapters or ():
            self.check_adapter(adapter)
        drafter = self.load_drafter()
        known = [
            drafter is self.asr or drafter.multilingual or language in drafter.languages
            for language in languages
        ]
        out: list[tuple[str, str]] = [("", "")] * len(audios)
        for model, share in ((drafter, True), (self.asr, False)):
            items = [i for i, k in enumerate(known) if k is share]
            if items:
                clips = [audios[i] for i in items]
                drafts = model.partial_texts(clips, [languages[i] for i in items])
                for i, draft in zip(items, drafts, strict=True):
                    out[i] = draft
        return out

    def load_drafter(self) -> WhisperAsr:
        """The model that drafts partials, loaded on first use (the ASR model if none)."""
        name = self.settings.stream.draft_model
        if not name or name == self.settings.asr.model:  # None or "": the ASR model
            return self.asr
        with self._drafter_lock:
            if self._drafter is None:
                self._drafter = load_drafter(self.settings, name)
            return self._drafter

    def transcribe_windows(
        self,
        windows: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[WindowResult]:
        """Recognise independent ASR windows together (the batched path)."""
        for adapter in adapters or ():
            self.check_adapter(adapter)
        return self.asr.transcribe_windows(windows, languages)

    @property
    def reads_encoder_states(self) -> bool:
        """Whether emotion reads the ASR pass's encoder states (else segment audio)."""
        return self.classifier is not None and self._emotion_encoder is None

    @property
    def classifies(self) -> bool:
        """Whether :meth:`classify` works (the model was loaded with emotion)."""
        return self.classifier is not None

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult | None]:
        """One emotion per span from the encoder frames inside it."""
        classify = self.classify if self.classifies else None
        return span_emotions(samples, transcript, spans, self.reads_encoder_states, classify)

    def classify(self, inputs: Sequence[EmotionInput]) -> list[EmotionResult]:
        """One emotion per input: its encoder frames, or its audio encoded here."""
        if self.classifier is None:
            raise RuntimeError("this model was loaded without emotion recognition")
        encoder = self._emotion_encoder or self.asr
        frames = [
            x.frames if x.frames is not None else encoder.encode_clip(_clip(x.audio))
            for x in inputs
        ]
        return self.classifier.classify_frames(frames) if frames else []


def _clip(audio: np.ndarray | None) -> np.ndarray:
    if audio is None:
        raise ValueError("an emotion input needs frames or audio")
    return audio
