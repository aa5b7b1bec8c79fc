"""Load the configured backends once and run the pipeline on files or bytes."""

from __future__ import annotations

from dataclasses import dataclass, replace

from ethostral_serve.audio import AudioSource, decode_audio
from ethostral_serve.backends.base import DiarizerBackend, SpeechModel, VadBackend
from ethostral_serve.pipeline.compose import StageHook, StageTimes, TranscribeOptions, transcribe
from ethostral_serve.schema import Session
from ethostral_serve.settings import Settings


def load_vad(settings: Settings) -> VadBackend:
    """The VAD backend named in settings."""
    from ethostral_serve.backends.silero import SileroVad

    return SileroVad(settings.vad)


def load_diarizer(settings: Settings) -> DiarizerBackend:
    """The diarization backend named in settings."""
    from ethostral_serve.backends.resemblyzer_diarizer import ResemblyzerDiarizer

    return ResemblyzerDiarizer(settings.diarizer)


def load_speech_model(settings: Settings, with_emotion: bool = True) -> SpeechModel:
    """The ASR + emotion model named in settings."""
    from ethostral_serve.backends.embedded import EmbeddedSpeechModel

    return EmbeddedSpeechModel(settings, with_emotion=with_emotion)


@dataclass
class Engine:
    """Every model the pipeline needs, loaded once."""

    settings: Settings
    vad: VadBackend
    diarizer: DiarizerBackend | None
    model: SpeechModel

    @classmethod
    def load(cls, settings: Settings, diarize: bool = True, emotion: bool = True) -> Engine:
        """Load the backends; skip the diarizer or emotion model when never needed."""
        return cls(
            settings=settings,
            vad=load_vad(settings),
            diarizer=load_diarizer(settings) if diarize else None,
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
        times = times if times is not None else StageTimes()
        options = replace(options, language=self.model.check_language(options.language))
        with times.stage("decode", on_stage):
            audio = decode_audio(source, self.settings.limits.max_duration_s)
        if options.diarize and self.diarizer is None:
            raise RuntimeError("the engine was loaded without a diarizer")
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
