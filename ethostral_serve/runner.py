"""Decode + pipeline for one request, over whichever backends it is given.

The same runner serves the in-process API (backends loaded by :class:`Engine`) and the
Ray Serve ingress (backends that forward to deployments): only the backends differ.
Every run and every backend call is an op of the configured tracer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from ethostral_serve.audio import AudioSource, decode_audio
from ethostral_serve.languages import requested_language
from ethostral_serve.pipeline import progress
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
from ethostral_serve.schema import Session
from ethostral_serve.settings import Settings
from ethostral_serve.tracing import NoopTracer, Tracer


@dataclass
class PipelineRunner:
    """Runs requests through the pipeline with the given backends."""

    settings: Settings
    vad: VadBackend
    diarizer: DiarizerBackend | None
    model: SpeechModel
    tracer: Tracer

    @classmethod
    def traced(
        cls,
        settings: Settings,
        vad: VadBackend,
        diarizer: DiarizerBackend | None,
        model: SpeechModel,
        tracer: Tracer | None = None,
    ) -> PipelineRunner:
        """A runner whose backend calls are child ops of each traced run."""
        tracer = tracer or NoopTracer()
        if tracer.enabled:
            vad = _TracedVad(vad, tracer)
            diarizer = _TracedDiarizer(diarizer, tracer) if diarizer is not None else None
            model = _TracedModel(model, tracer)
        return cls(settings, vad, diarizer, model, tracer)

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
    ) -> Session:
        """Decode ``source`` and transcribe it (blocking; call it from a worker thread).

        ``on_stage`` hears each stage's name and seconds as it ends; ``times`` collects them.
        """
        options = replace(
            options,
            language=self.check_language(options.language),
            adapter=self.check_adapter(options.adapter),
        )
        if options.diarize and self.diarizer is None:
            options = replace(options, diarize=False)
        run = self.tracer.op("transcribe", self._run)
        return run(source, filename, options, on_stage, times or StageTimes())

    def _run(
        self,
        source: AudioSource,
        filename: str,
        options: TranscribeOptions,
        on_stage: StageHook | None,
        times: StageTimes,
    ) -> Session:
        progress.report("decode")
        with times.stage("decode", on_stage):
            audio = self.tracer.op("decode", decode_audio)(
                source, self.settings.limits.max_duration_s
            )
        return transcribe(
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
