"""Decode + pipeline for one request, over whichever backends it is given.

The same runner serves the in-process API (backends loaded by :class:`Engine`) and the
Ray Serve ingress (backends that forward to deployments): only the backends differ.
Every run and every backend call is an op of the configured tracer; every stage's
seconds go to the runner's stage observer (metrics), if it has one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ethostral_serve.audio import Audio, AudioSource, decode_audio, header_duration_s
from ethostral_serve.errors import AudioTooLongError
from ethostral_serve.languages import requested_language
from ethostral_serve.pipeline import progress, timing
from ethostral_serve.pipeline.compose import StageHook, StageTimes, TranscribeOptions, transcribe
from ethostral_serve.pipeline.ports import DiarizerBackend, SpeechModel, VadBackend
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionResult,
    Span,
    SpeakerCount,
    SpeakerTurn,
    Transcript,
)
from ethostral_serve.playback import encode_playback
from ethostral_serve.schema import Session
from ethostral_serve.settings import LimitSettings, Settings
from ethostral_serve.tracing import NoopTracer, Tracer


@dataclass
class KeptAudio:
    """Receives a run's audio encoded for playback (``run(..., keep_audio=KeptAudio())``:
    the decoded samples, not decoded twice)."""

    data: bytes | None = None


@dataclass
class PipelineRunner:
    """Runs requests through the pipeline with the given backends."""

    settings: Settings
    vad: VadBackend
    diarizer: DiarizerBackend | None
    model: SpeechModel
    tracer: Tracer
    stage_observer: timing.StageObserver | None = None

    @classmethod
    def traced(
        cls,
        settings: Settings,
        vad: VadBackend,
        diarizer: DiarizerBackend | None,
        model: SpeechModel,
        tracer: Tracer | None = None,
        stage_observer: timing.StageObserver | None = None,
    ) -> PipelineRunner:
        """A runner whose backend calls are child ops of each traced run; each stage's
        seconds go to ``stage_observer``."""
        tracer = tracer or NoopTracer()
        if tracer.enabled:
            vad = _TracedVad(vad, tracer)
            diarizer = _TracedDiarizer(diarizer, tracer) if diarizer is not None else None
            model = _TracedModel(model, tracer)
        return cls(settings, vad, diarizer, model, tracer, stage_observer)

    def check_language(self, language: str | None) -> str | None:
        """``None``, ``""`` and ``"auto"`` mean detect; otherwise a supported ISO code."""
        return self.model.check_language(requested_language(language))

    def check_adapter(self, adapter: str | None) -> str | None:
        """``None`` and ``""`` mean the model's default; otherwise one of its adapters."""
        return self.model.check_adapter(adapter)

    def run(
        self,
        source: AudioSource,
        filename: str,
        options: TranscribeOptions,
        on_stage: StageHook | None = None,
        times: StageTimes | None = None,
        keep_audio: KeptAudio | None = None,
    ) -> Session:
        """Decode ``source`` and transcribe it (blocking; call it from a worker thread).

        ``on_stage`` hears each stage's name and seconds as it ends; ``times`` collects them.
        With ``keep_audio``, the audio is also encoded for playback into it (the session
        says ``has_audio``), and may be at most ``limits.max_stored_audio_s`` long (413).
        """
        options = replace(
            options,
            language=self.check_language(options.language),
            adapter=self.check_adapter(options.adapter),
        )
        if options.diarize and self.diarizer is None:
            options = replace(options, diarize=False)
        run = self.tracer.op("transcribe", self._run)
        observing = (
            timing.observing(self.stage_observer)
            if self.stage_observer is not None
            else contextlib.nullcontext()
        )
        with observing:
            return run(source, filename, options, on_stage, times or StageTimes(), keep_audio)

    def _run(
        self,
        source: AudioSource,
        filename: str,
        options: TranscribeOptions,
        on_stage: StageHook | None,
        times: StageTimes,
        keep_audio: KeptAudio | None = None,
    ) -> Session:
        progress.report("decode")
        with times.stage("decode", on_stage):
            audio = self._decode(source, keep_audio is not None)
        session = transcribe(
            audio,
            filename,
            options,
            vad=self.vad,
            diarizer=self.diarizer,
            model=self.model,
            settings=self.settings,
            on_stage=on_stage,
            times=times,
        )
        if keep_audio is None:
            return session
        with times.stage("encode_audio", on_stage):
            keep_audio.data = self.tracer.op("encode_audio", encode_playback)(audio.samples)
        return session.model_copy(update={"has_audio": True})

    def _decode(self, source: AudioSource, keep_audio: bool) -> Audio:
        """The decoded upload, within ``limits.max_duration_s`` and, when its audio is
        kept, ``limits.max_stored_audio_s`` (checked from the header before decoding)."""
        limit, stored_bound = audio_limit_s(self.settings.limits, keep_audio)
        try:
            return self.tracer.op("decode", decode_audio)(source, limit)
        except AudioTooLongError as exc:
            raise _too_long(exc, stored_bound) from None


def audio_limit_s(limits: LimitSettings, keep_audio: bool) -> tuple[float, bool]:
    """The longest audio a run decodes, and whether that is the bound on kept audio
    (``limits.max_stored_audio_s``, with ``keep_audio``) rather than ``max_duration_s``."""
    stored_bound = keep_audio and limits.max_stored_audio_s < limits.max_duration_s
    return (limits.max_stored_audio_s if stored_bound else limits.max_duration_s), stored_bound


def check_header_length(
    path: str | os.PathLike[str], limits: LimitSettings, keep_audio: bool
) -> None:
    """Raise the 413 a run of this file would end with (``AudioTooLongError``) when its
    container header says it is too long; nothing when the header does not say (the run
    checks as it decodes). For a job, before it is queued."""
    limit, stored_bound = audio_limit_s(limits, keep_audio)
    header_s = header_duration_s(path)
    if header_s is not None and header_s > limit:
        too_long = AudioTooLongError(f"audio is {header_s:.1f} s long; the limit is {limit:.0f} s")
        raise _too_long(too_long, stored_bound)


def _too_long(exc: AudioTooLongError, stored_bound: bool) -> AudioTooLongError:
    """``exc``, saying so when the bound passed is the one on kept audio."""
    if not stored_bound:
        return exc
    return AudioTooLongError(
        f"{exc.detail} of audio a session may keep for playback (store_audio, "
        "ETHOSTRAL_LIMITS__MAX_STORED_AUDIO_S); send it without store_audio to "
        "transcribe it"
    )


class _TracedVad:
    def __init__(self, inner: VadBackend, tracer: Tracer) -> None:
        self._speech_regions = tracer.op("vad", inner.speech_regions)

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        return self._speech_regions(samples)


class _TracedDiarizer:
    def __init__(self, inner: DiarizerBackend, tracer: Tracer) -> None:
        self._diarize = tracer.op("diarize", inner.diarize)

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        return self._diarize(samples, regions, speakers)


class _TracedModel:
    def __init__(self, inner: SpeechModel, tracer: Tracer) -> None:
        self._inner = inner
        self._transcribe = tracer.op("asr", inner.transcribe)
        self._emotions = tracer.op("emotion", inner.emotions)

    @property
    def languages(self) -> tuple[str, ...]:
        return self._inner.languages

    @property
    def adapters(self) -> tuple[str, ...]:
        return self._inner.adapters

    def check_language(self, language: str | None) -> str | None:
        return self._inner.check_language(language)

    def check_adapter(self, adapter: str | None) -> str | None:
        return self._inner.check_adapter(adapter)

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        adapter: str | None = None,
    ) -> Transcript:
        return self._transcribe(samples, chunks, language, adapter)

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult | None]:
        return self._emotions(samples, transcript, spans)
