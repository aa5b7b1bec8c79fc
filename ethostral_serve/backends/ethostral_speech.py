"""Ethostral as the service's speech model: Voxtral + LoRA transcribes each ASR window
and tags its emotions in one pass.

- **Word times.** Voxtral writes text without timestamps, so a window's words are
  placed by their share of its characters over the window's length. Windows are
  speech regions joined by the VAD, so this is close within a window; it is not the
  word-level alignment Whisper gives.
- **Emotion.** A tag's time is where it sits in the text, on the same scale, and it
  holds until the next tag or the window's end. A segment takes the most probable
  emotion tag inside it, else the tag in force where it starts; a segment of a window
  without tags gets the embedded emotion model's emotion of its audio
  (``ethostral.emotion_fallback``).
- **Language.** Voxtral does not report the language it heard: audio sent without one
  is identified with the bundled Whisper base among ``ethostral.languages``
  (``ethostral.detect_language``), and that language is then given to Voxtral.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.ethostral import EthostralAsr, EthostralResult
from ethostral_serve.backends.ethostral_tags import MAX_TAG_CHARS, label_emotion, parse_tags
from ethostral_serve.backends.windows import (
    MIN_WINDOW_SAMPLES,
    check_adapter,
    check_language,
    span_emotions,
    transcript_from_windows,
)
from ethostral_serve.pipeline.language_id import LanguageRanking
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
from ethostral_serve.settings import Settings

if TYPE_CHECKING:
    from ethostral_serve.backends.emotion import EmotionClassifier
    from ethostral_serve.backends.whisper import WhisperAsr


def timed_words(result: EthostralResult, duration: float) -> list[WordTiming]:
    """The words of ``result.text`` spread over ``duration`` seconds by character share,
    each with the mean probability of the tokens it was written with."""
    text, tagged = result.text, result.tagged
    if not text:
        return []
    scale = duration / len(text)
    words = []
    for m in re.finditer(r"\S+", text):
        a, b = m.span()
        probability = result.probability_of(tagged.offsets[a:b])  # a tag inside: not its
        words.append(WordTiming(" " + m.group(), a * scale, b * scale, probability))
    return words


def timed_emotions(result: EthostralResult, duration: float) -> list[TimedEmotion]:
    """The emotion tags of ``result`` at their place in the text, on the same scale as
    :func:`timed_words`: where the text after the tag goes on (a tag written right
    after a word, ``that.[angry] Okay``, belongs to what follows it); confidence is the
    model's probability of the tag."""
    tagged = result.tagged
    scale = duration / len(tagged.text) if tagged.text else 0.0
    return [
        TimedEmotion(tagged.position(tag.end) * scale, label_emotion(tag.label, p), duration)
        for tag, p in zip(tagged.tags, result.tag_probabilities, strict=True)
        if tag.label is not None
    ]


def draft_text(raw: str) -> str:
    """The text of a draft whose generation may have stopped inside a tag: an unclosed
    ``[`` near the end that does not start a known tag (``… now [cou``) is a tag being
    written, and is dropped with what follows it."""
    cut = raw.rfind("[")
    tail = raw[cut:] if cut != -1 else ""
    if tail and "]" not in tail and len(tail) <= MAX_TAG_CHARS:
        raw = raw if any(t.known for t in parse_tags(tail).tags) else raw[:cut]
    return parse_tags(raw).text


def whisper_base(settings: Settings) -> WhisperAsr:
    """The bundled Whisper base on ``asr``'s device: it identifies languages and encodes
    audio for the fallback emotion model."""
    from ethostral_serve.backends.whisper import WhisperAsr

    return WhisperAsr(settings.asr.model_copy(update={"model": "base"}), settings.cache_dir)


class TaggedRecognizer(Protocol):
    """What the speech model needs of Ethostral: :class:`EthostralAsr` in this process,
    or a client of a remote one (``ethostral_serve.backends.endpoint``)."""

    @property
    def adapters(self) -> tuple[str, ...]: ...

    def load_adapter(self, name: str) -> None: ...

    def unload_adapter(self, name: str) -> None: ...

    def transcribe_segments(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        max_new_tokens: int | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[EthostralResult]: ...


class LocalSwitches(Protocol):
    """The settings section's knobs of what runs here beside Ethostral (the ``ethostral``
    or the ``endpoint`` section)."""

    languages: list[str]
    batch_size: int
    detect_language: bool
    emotion_fallback: bool


class EthostralSpeechModel:
    """``WindowedSpeechModel`` over Ethostral (settings' ``ethostral`` section), or over
    the recognizer ``asr`` with the knobs of ``switches``."""

    multilingual = True
    reads_encoder_states = False  # the fallback emotion model reads segment audio

    def __init__(
        self,
        settings: Settings,
        with_emotion: bool = True,
        asr: TaggedRecognizer | None = None,
        switches: LocalSwitches | None = None,
    ) -> None:
        s = switches if switches is not None else settings.ethostral
        self.settings = settings
        self.asr: TaggedRecognizer = asr if asr is not None else EthostralAsr(settings.ethostral)
        self.batch_size = s.batch_size  # windows per transcribe_windows call in transcribe
        self.languages: tuple[str, ...] = tuple(dict.fromkeys(x.lower() for x in s.languages))
        self.classifier: EmotionClassifier | None = None
        self.whisper: WhisperAsr | None = None
        self.detects_language = s.detect_language
        fallback = with_emotion and s.emotion_fallback
        if fallback or s.detect_language:
            self.whisper = whisper_base(settings)
        if fallback:
            from ethostral_serve.backends.emotion import EmotionClassifier

            self.classifier = EmotionClassifier(settings.emotion)

    @property
    def classifies(self) -> bool:
        """Whether untagged segments get the embedded emotion model's emotion."""
        return self.classifier is not None

    @property
    def adapters(self) -> tuple[str, ...]:
        """The named adapters a request may choose (``ethostral.adapters``)."""
        return self.asr.adapters

    def check_language(self, language: str | None) -> str | None:
        """Normalise a requested language code; raise ``UnsupportedLanguageError``."""
        return check_language(language, self.languages)

    def check_adapter(self, adapter: str | None) -> str | None:
        """A configured adapter name (None: the default); else ``UnknownAdapterError``."""
        return check_adapter(adapter, self.adapters)

    def load_adapter(self, adapter: str) -> None:
        """Load a named adapter now (it would load on first use anyway)."""
        self.asr.load_adapter(adapter)

    def unload_adapter(self, adapter: str) -> None:
        """Free a named adapter's weights (it loads again when next used)."""
        self.asr.unload_adapter(adapter)

    def language_ranking(self, audio: np.ndarray) -> LanguageRanking:
        """The languages spoken in ``audio`` (any Whisper knows), most probable first;
        empty when detection is off or the audio too short."""
        if not self.detects_language or self.whisper is None or len(audio) < MIN_WINDOW_SAMPLES:
            return ()
        return self.whisper.language_ranking(audio[: 30 * SAMPLE_RATE])

    def identify_language(self, windows: Sequence[np.ndarray]) -> tuple[str, float] | None:
        """A file's language from its first windows, as Whisper base identifies it
        (:meth:`WhisperAsr.identify_language`); None when detection is off."""
        if not self.detects_language or self.whisper is None:
            return None
        return self.whisper.identify_language([w[: 30 * SAMPLE_RATE] for w in windows])

    def settle_language(self, windows: Sequence[np.ndarray], candidates: Sequence[str]) -> str:
        """Of an unsure language vote's candidates, the one Whisper base drafts best."""
        if not self.detects_language or self.whisper is None:
            return candidates[0]
        return self.whisper.settle_language(windows, candidates)

    def _voxtral_language(self, language: str | None) -> str | None:
        """The language to tell Voxtral: one of its own, else None (it guesses)."""
        return language if language in self.languages else None

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        adapter: str | None = None,
    ) -> Transcript:
        """Every window in batches of ``batch_size``; when no language is given, the one
        :meth:`identify_language` finds in the first windows is used for all."""
        language = self.check_language(language)
        adapter = self.check_adapter(adapter)
        windows = [c.samples(samples, SAMPLE_RATE) for c in chunks]
        probability = 1.0
        if language is None:
            language, probability = self.identify_language(windows) or (None, 1.0)
        step = self.batch_size
        results: list[WindowResult] = []
        for lo in range(0, len(windows), step):
            batch = windows[lo : lo + step]
            results += self.transcribe_windows(
                batch, [language] * len(batch), [adapter] * len(batch)
            )
        transcript = transcript_from_windows(chunks, results, self.multilingual)
        if transcript.language == language:
            transcript.language_probability = probability  # detected, not given
        return transcript

    def transcribe_windows(
        self,
        windows: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[WindowResult]:
        """Recognise windows (each at most 30 s) in one batched generation, each with its
        adapter (None: the default); a None language is detected first (Voxtral is
        told a language only when it is one of its own). Times are seconds inside each
        window."""
        named = [self.check_adapter(a) for a in adapters or [None] * len(windows)]
        if len(windows) != len(languages) or len(windows) != len(named):
            raise ValueError("one language (or None) and one adapter (or None) per window")
        results = [WindowResult.empty(lang) for lang in languages]
        todo = [i for i, w in enumerate(windows) if len(w) >= MIN_WINDOW_SAMPLES]
        if not todo:
            return results
        heard = {i: self.language_ranking(windows[i]) for i in todo if languages[i] is None}
        told = [heard[i][0] if heard.get(i) else (languages[i], 1.0) for i in todo]
        outputs = self.asr.transcribe_segments(
            [windows[i] for i in todo],
            [self._voxtral_language(t[0]) for t in told],
            adapters=[named[i] for i in todo],
        )
        for i, (language, probability), out in zip(todo, told, outputs, strict=True):
            duration = len(windows[i]) / SAMPLE_RATE
            results[i] = WindowResult(
                timed_words(out, duration),
                language,
                probability,
                np.zeros((0, 0), np.float16),
                timed_emotions(out, duration),
                language_ranking=heard.get(i, ()),
            )
        return results

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult | None]:
        """Each span's most probable emotion tag, else the fallback's emotion (or None)."""
        classify = self.classify if self.classifies else None
        return span_emotions(samples, transcript, spans, False, classify)

    def classify(self, inputs: Sequence[EmotionInput]) -> list[EmotionResult]:
        """The embedded emotion model's emotion of each input's audio."""
        if self.classifier is None or self.whisper is None:
            raise RuntimeError("this model was loaded without the fallback emotion model")
        clips = []
        for x in inputs:
            if x.audio is None:
                raise ValueError("Ethostral's fallback emotion reads segment audio")
            clips.append(self.whisper.encode_clip(x.audio))
        return self.classifier.classify_frames(clips) if clips else []

    def partial_text(
        self, audio: np.ndarray, language: str | None, adapter: str | None = None
    ) -> tuple[str, str]:
        """A quick draft of a live utterance: tag-free text and language (``und``
        when not given: drafts do not identify it; a stream's finals do).

        Greedy like the finals but capped at a length speech rarely passes, so a draft
        cannot run on (:func:`draft_text` drops a tag the cap cut short).
        """
        if len(audio) < MIN_WINDOW_SAMPLES:
            return "", language or "und"
        cap = 16 + int(8 * len(audio) / SAMPLE_RATE)
        adapter = self.check_adapter(adapter)
        (out,) = self.asr.transcribe_segments(
            [audio], [self._voxtral_language(language)], max_new_tokens=cap, adapters=[adapter]
        )
        return draft_text(out.raw), language or "und"

    def partial_texts(
        self,
        audios: Sequence[np.ndarray],
        languages: Sequence[str | None],
        adapters: Sequence[str | None] | None = None,
    ) -> list[tuple[str, str]]:
        """Drafts of several live utterances: :meth:`partial_text` of each in turn."""
        named = adapters or [None] * len(audios)
        return [
            self.partial_text(audio, language, adapter)
            for audio, language, adapter in zip(audios, languages, named, strict=True)
        ]
