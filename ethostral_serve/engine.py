"""Load the configured backends once and run the pipeline on files or bytes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ethostral_serve.audio import AudioSource
from ethostral_serve.pipeline.compose import StageHook, StageTimes, TranscribeOptions
from ethostral_serve.pipeline.ports import DiarizerBackend, SpeechModel, VadBackend
from ethostral_serve.pipeline.types import Span, SpeakerCount, SpeakerTurn
from ethostral_serve.schema import Session
from ethostral_serve.settings import Settings


def load_vad(settings: Settings) -> VadBackend:
    """The VAD backend named in settings."""
    from ethostral_serve.backends.vad.silero import SileroVad

    return SileroVad(settings.vad)


def load_diarizer(settings: Settings) -> DiarizerBackend:
    """The diarization backend named in settings."""
    if settings.diarizer.backend == "pyannote":
        from ethostral_serve.backends.diarization.pyannote import PyannoteDiarizer

        return PyannoteDiarizer(settings.diarizer)
    if settings.diarizer.backend == "resemblyzer":
        from ethostral_serve.backends.diarization.resemblyzer import ResemblyzerDiarizer

        return ResemblyzerDiarizer(settings.diarizer, settings.cache_dir)
    from ethostral_serve.backends.diarization.embedded import OverlapAwareDiarizer

    return OverlapAwareDiarizer(settings.diarizer, settings.cache_dir)


def load_speech_model(settings: Settings, with_emotion: bool = True) -> SpeechModel:
    """The ASR + emotion model named in settings."""
    if settings.speech_model == "ethostral":
        from ethostral_serve.backends.ethostral_speech import EthostralSpeechModel

        return EthostralSpeechModel(settings, with_emotion=with_emotion)
    if settings.speech_model == "endpoint":
        from ethostral_serve.backends.endpoint import EndpointSpeechModel

        return EndpointSpeechModel(settings, with_emotion=with_emotion)
    from ethostral_serve.backends.embedded import EmbeddedSpeechModel

    return EmbeddedSpeechModel(settings, with_emotion=with_emotion)


class BackgroundDiarizer:
    """A diarizer that loads on a background thread; ``diarize`` waits for it.

    The CLI uses it so the diarizer's imports overlap the first file's decoding, VAD
    and ASR instead of delaying them. A load error is raised by the first ``diarize``.
    """

    def __init__(self, settings: Settings) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="load-diarizer")
        self._future = self._pool.submit(load_diarizer, settings)
        self._pool.shutdown(wait=False)

    def ready(self) -> DiarizerBackend:
        """The loaded diarizer (waits for the load; re-raises its error)."""
        return self._future.result()

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        """Diarize with the loaded backend."""
        return self.ready().diarize(samples, regions, speakers)


@dataclass
class Engine:
    """Every model the pipeline needs, loaded once."""

    settings: Settings
    vad: VadBackend
    diarizer: DiarizerBackend | None
    model: SpeechModel

    @classmethod
    def load(
        cls,
        settings: Settings,
        diarize: bool = True,
        emotion: bool = True,
        background: bool = False,
    ) -> Engine:
        """Load the backends; skip the diarizer or emotion model when never needed.

        With ``background`` the diarizer loads on a thread while work starts.
        """
        diarizer: DiarizerBackend | None = None
        if diarize:
            diarizer = BackgroundDiarizer(settings) if background else load_diarizer(settings)
        return cls(
            settings=settings,
            vad=load_vad(settings),
            diarizer=diarizer,
            model=load_speech_model(settings, with_emotion=emotion),
        )

    def run(
        self,
        source: AudioSource,
        filename: str,
        options: TranscribeOptions,
        on_stage: StageHook | None = None,
        times: StageTimes | None = None,
    ) -> Session:
        """Decode ``source`` and transcribe it."""
        from ethostral_serve.runner import PipelineRunner

        if options.diarize and self.diarizer is None:
            raise RuntimeError("the engine was loaded without a diarizer")
        runner = PipelineRunner.traced(self.settings, self.vad, self.diarizer, self.model)
        return runner.run(source, filename, options, on_stage=on_stage, times=times)
