"""Speech recognition with faster-whisper, keeping the encoder states for emotion.

Each ASR window (a :class:`Chunk` of at most 30 s of speech) is encoded once; that
encoder output both drives decoding (beam search, word timestamps) and is kept, frame by
frame on the original timeline, so the emotion model reads it without a second pass.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.backends.whisper_models import resolve_whisper_model
from ethostral_serve.errors import ModelLoadError, UnsupportedLanguageError
from ethostral_serve.pipeline.types import Chunk, Transcript, WordTiming
from ethostral_serve.settings import AsrSettings

FRAME_S = 0.02  # one Whisper encoder frame covers 20 ms


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


def default_cpu_threads() -> int:
    """Cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


class WhisperAsr:
    """faster-whisper over the bundled (or a local) CTranslate2 Whisper model."""

    def __init__(self, settings: AsrSettings, cache_dir: os.PathLike[str] | str) -> None:
        from pathlib import Path

        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise ModelLoadError("faster-whisper is missing: pip install faster-whisper") from exc
        self.settings = settings
        self.model_dir = resolve_whisper_model(settings.model, Path(cache_dir))
        threads = settings.cpu_threads or default_cpu_threads()
        try:
            self.model = WhisperModel(
                str(self.model_dir),
                device=settings.device,
                compute_type=settings.compute_type,
                cpu_threads=threads,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise ModelLoadError(f"could not load Whisper from {self.model_dir}: {exc}") from exc
        self.multilingual = bool(self.model.model.is_multilingual)
        self.languages: tuple[str, ...] = tuple(self.model.supported_languages)

    def check_language(self, language: str | None) -> str | None:
        """Validate a requested language code (``None`` means detect)."""
        if language is None:
            return None
        code = language.strip().lower()
        if code not in self.languages:
            raise UnsupportedLanguageError(
                f"language {language!r} is not supported by the ASR model; "
                f"use one of: {', '.join(self.languages)}"
            )
        return code

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        progress: Callable[[float], None] | None = None,
    ) -> Transcript:
        """Recognise each window; words are mapped back to the original timeline."""
        from faster_whisper.audio import pad_or_trim
        from faster_whisper.tokenizer import Tokenizer

        language = self.check_language(language)
        fe = self.model.feature_extractor
        words: list[WordTiming] = []
        frames: list[np.ndarray] = []
        times: list[np.ndarray] = []
        language_probability = 1.0
        tokenizer = None
        for index, chunk in enumerate(chunks):
            audio = chunk.samples(samples, SAMPLE_RATE)
            if audio.size < SAMPLE_RATE // 10:
                continue
            features = fe(audio)
            encoded = self.model.encode(pad_or_trim(features[:, : fe.nb_max_frames]))
            if tokenizer is None:
                if language is None:
                    language, language_probability = self._detect(encoded)
                tokenizer = Tokenizer(
                    self.model.hf_tokenizer,
                    self.multilingual,
                    task="transcribe",
                    language=language,
                )
            options = self._options()
            for segment in self.model.generate_segments(
                features, tokenizer, options, False, encoded
            ):
                for w in segment.words or []:
                    start = chunk.to_original(float(w.start))
                    end = max(start, chunk.to_original(float(w.end)))
                    words.append(WordTiming(w.word, start, end, float(w.probability)))
            n = min(int(np.ceil(chunk.duration / FRAME_S)), fe.nb_max_frames // 2)
            states = np.asarray(encoded)[0, :n]
            frames.append(states.astype(np.float16))
            times.append(np.array([chunk.to_original((j + 0.5) * FRAME_S) for j in range(n)]))
            if progress is not None:
                progress((index + 1) / len(chunks))
        if language is None:
            language = "en" if not self.multilingual else "und"
        d = frames[0].shape[1] if frames else 0
        state = EncoderStates(
            np.concatenate(frames) if frames else np.zeros((0, d), np.float16),
            np.concatenate(times) if times else np.zeros(0),
        )
        order = np.argsort(state.times, kind="stable")
        state = EncoderStates(state.frames[order], state.times[order])
        return Transcript(language, language_probability, words, state)

    def encode_clip(self, audio: np.ndarray) -> np.ndarray:
        """Encoder frames (n, d) covering ``audio`` (at most 30 s), as float32."""
        from faster_whisper.audio import pad_or_trim

        fe = self.model.feature_extractor
        features = fe(audio)
        encoded = self.model.encode(pad_or_trim(features[:, : fe.nb_max_frames]))
        n = min(int(np.ceil(len(audio) / SAMPLE_RATE / FRAME_S)), fe.nb_max_frames // 2)
        return np.asarray(encoded)[0, : max(1, n)].astype(np.float32)

    def _detect(self, encoded: object) -> tuple[str, float]:
        if not self.multilingual:
            return "en", 1.0
        results = self.model.model.detect_language(encoded)[0]
        token, prob = results[0]
        return token[2:-2], float(prob)

    def _options(self) -> object:
        # Windows are decoded independently: prompting a window with the previous one's
        # text made Whisper loop on phrases across speaker changes (measured).
        from faster_whisper.transcribe import TranscriptionOptions

        s = self.settings
        return TranscriptionOptions(
            beam_size=s.beam_size,
            best_of=5,
            patience=1.0,
            length_penalty=1.0,
            repetition_penalty=1.0,
            no_repeat_ngram_size=0,
            log_prob_threshold=-1.0,
            no_speech_threshold=0.6,
            compression_ratio_threshold=2.4,
            condition_on_previous_text=True,
            prompt_reset_on_temperature=0.5,
            temperatures=[0.0, 0.2, 0.4, 0.6, 0.8, 1.0],
            initial_prompt=None,
            prefix=None,
            suppress_blank=True,
            suppress_tokens=[-1],
            without_timestamps=False,
            max_initial_timestamp=1.0,
            word_timestamps=True,  # segments and speakers are built from word times
            prepend_punctuations="\"'“¿([{-",
            append_punctuations="\"'.。,，!！?？:：”)]}、",
            multilingual=False,
            max_new_tokens=None,
            clip_timestamps="0",
            hallucination_silence_threshold=None,
            hotwords=None,
        )
