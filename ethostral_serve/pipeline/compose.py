"""The one place that runs the stages in order: decode → VAD → diarize → ASR + emotion."""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from ethostral_serve.audio import Audio
from ethostral_serve.pipeline import progress, timing
from ethostral_serve.pipeline.chunks import build_chunks, with_diarized_speech, wordless_regions
from ethostral_serve.pipeline.ports import DiarizerBackend, SpeechModel, VadBackend
from ethostral_serve.pipeline.segments import (
    assign_speakers,
    extend_to_speech,
    group_words,
    rename_speakers,
)
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionResult,
    Span,
    SpeakerCount,
    SpeakerTurn,
    Transcript,
    WordTiming,
)
from ethostral_serve.schema import Emotion, Segment, Session, Word
from ethostral_serve.settings import Settings, VadSettings

UNDETERMINED_LANGUAGE = "und"  # ISO 639-2 code for "no language could be told"

StageHook = Callable[[str, float], None]


@dataclass(frozen=True)
class TranscribeOptions:
    """Per-request choices."""

    language: str | None = None
    diarize: bool = True
    emotion: bool = True
    adapter: str | None = None  # a named fine-tune of the speech model; None: its default
    speakers: SpeakerCount | None = None  # how many speakers the request says there are


@dataclass
class StageTimes:
    """Seconds spent in each stage of one run."""

    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str, hook: StageHook | None = None) -> Iterator[None]:
        """Time a stage; report it to ``hook`` and to the context's stage observer
        (:mod:`~ethostral_serve.pipeline.timing`) when it ends."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - t0
            self.seconds[name] = self.seconds.get(name, 0.0) + elapsed
            timing.observe(name, elapsed)
            if hook is not None:
                hook(name, elapsed)


def transcribe(
    audio: Audio,
    filename: str,
    options: TranscribeOptions,
    *,
    vad: VadBackend,
    diarizer: DiarizerBackend | None,
    model: SpeechModel,
    settings: Settings,
    on_stage: StageHook | None = None,
    times: StageTimes | None = None,
) -> Session:
    """Run the whole pipeline on decoded audio and return the (unsaved) Session."""
    times = times if times is not None else StageTimes()
    samples = audio.samples
    progress.report("vad")
    with times.stage("vad", on_stage):
        regions = vad.speech_regions(samples)
    if not regions:
        return Session(
            filename=filename,
            language=options.language or UNDETERMINED_LANGUAGE,
            duration_ms=audio.duration_ms,
            segments=[],
        )
    speaker_pass = diarizer if options.diarize else None
    run = _Recognition(samples, options, model, settings, times, on_stage)
    if speaker_pass is not None and settings.vad.diarized_speech_min_s > 0:
        turns, regions, transcript = run.after_diarizing(speaker_pass, regions)
    else:
        turns, transcript = run.beside_diarizing(speaker_pass, regions)
    progress.report("segment")
    with times.stage("segment", on_stage):
        speakers = assign_speakers(transcript.words, turns)
        drafts = group_words(
            transcript.words,
            speakers,
            max_segment_s=settings.segments.max_segment_s,
            pause_split_s=settings.segments.pause_split_s,
        )
        names = rename_speakers([d.speaker for d in drafts])
    emotions: list[EmotionResult | None] = [None] * len(drafts)
    if options.emotion and drafts:
        progress.report("emotion")
        with times.stage("emotion", on_stage):
            emotions = list(model.emotions(samples, transcript, [d.span for d in drafts]))
    # Emotion read the words' span (what it was trained on); the segment reports the
    # speech around the words too.
    spans = extend_to_speech(
        [d.span for d in drafts],
        [d.speaker for d in drafts],
        turns,
        regions,
        settings.segments.extend_to_speech_s,
    )
    segments = [
        Segment(
            speaker=name,
            start_ms=to_ms(span.start),
            end_ms=max(to_ms(span.end), to_ms(span.start)),
            text=d.text,
            emotion=to_emotion(e),
            words=[to_word(w) for w in d.words],
        )
        for d, span, name, e in zip(drafts, spans, names, emotions, strict=True)
    ]
    return Session(
        filename=filename,
        language=transcript.language,
        duration_ms=audio.duration_ms,
        segments=segments,
    )


@dataclass
class _Recognition:
    """The ASR and diarization stages of one run, in one of their two orders."""

    samples: np.ndarray
    options: TranscribeOptions
    model: SpeechModel
    settings: Settings
    times: StageTimes
    on_stage: StageHook | None

    def _recognise(self, regions: Sequence[Span]) -> Transcript:
        progress.report("asr")
        with self.times.stage("asr", self.on_stage):
            return recognise(
                self.model,
                self.samples,
                regions,
                self.settings.vad,
                self.options.language,
                self.options.adapter,
            )

    def _diarize(self, diarizer: DiarizerBackend, regions: Sequence[Span]) -> list[SpeakerTurn]:
        return _timed(
            self.times,
            "diarize",
            self.on_stage,
            diarizer.diarize,
            self.samples,
            regions,
            self.options.speakers,
        )

    def after_diarizing(
        self, diarizer: DiarizerBackend, regions: list[Span]
    ) -> tuple[list[SpeakerTurn], list[Span], Transcript]:
        """Diarize first; the recogniser then reads the VAD's regions and the diarized
        speech outside them. Returns the turns, what was read, and the transcript."""
        progress.report("diarize")
        turns = self._diarize(diarizer, regions)
        read = with_diarized_speech(regions, turns, self.settings.vad.diarized_speech_min_s)
        return turns, read, self._recognise(read)

    def beside_diarizing(
        self, diarizer: DiarizerBackend | None, regions: list[Span]
    ) -> tuple[list[SpeakerTurn], Transcript]:
        """Recognise the VAD's regions while ``diarizer`` (if any) runs on a thread:
        both release the GIL in their kernels, and ASR's beam search leaves cores idle
        part of the time."""
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="diarize") as pool:
            pending: Future[list[SpeakerTurn]] | None = None
            if diarizer is not None:
                # The copied context keeps tracing context (Weave's current call) on
                # the thread.
                pending = pool.submit(
                    contextvars.copy_context().run, self._diarize, diarizer, regions
                )
            transcript = self._recognise(regions)
            if pending is None:
                return [], transcript
            progress.report("diarize")
            return pending.result(), transcript


def recognise(
    model: SpeechModel,
    samples: np.ndarray,
    regions: Sequence[Span],
    settings: VadSettings,
    language: str | None,
    adapter: str | None = None,
) -> Transcript:
    """What ``model`` hears in ``regions``: read in windows of several regions, then each
    region of at least ``settings.reread_wordless_s`` that came back with no word read
    again alone (Whisper can pass over a quiet voice packed beside louder speech)."""
    chunks = build_chunks(regions, settings.max_chunk_s)
    first = model.transcribe(samples, chunks, language, adapter)
    missed = wordless_regions(chunks, first.words, settings.reread_wordless_s)
    if not missed:
        return first
    # in the language the first pass settled on: a region of a few seconds is too short
    # to identify it
    again = model.transcribe(
        samples,
        [Chunk((r,), (0.0,)) for r in missed],
        first.language if first.words else language,
        adapter,
    )
    return with_words_of(first, again)


def with_words_of(first: Transcript, again: Transcript) -> Transcript:
    """``first`` with the words (and inline emotions) of regions read again added, in time
    order. ``first``'s model state covers those regions already (it read them too)."""
    return Transcript(
        first.language,
        first.language_probability,
        sorted([*first.words, *again.words], key=lambda w: (w.start, w.end)),
        first.state,
        sorted([*first.emotions, *again.emotions], key=lambda e: e.time),
    )


def _timed(
    times: StageTimes,
    name: str,
    hook: StageHook | None,
    fn: Callable[..., list[SpeakerTurn]],
    *args: object,
) -> list[SpeakerTurn]:
    with times.stage(name, hook):
        return fn(*args)


def to_ms(seconds: float) -> int:
    """Seconds → whole milliseconds, never negative."""
    return max(0, round(seconds * 1000))


def to_word(word: WordTiming, offset_s: float = 0.0) -> Word:
    """The schema's word; its times shifted by ``offset_s`` onto the output timeline."""
    start = to_ms(offset_s + word.start)
    return Word(
        word=word.text.strip(),
        start_ms=start,
        end_ms=max(to_ms(offset_s + word.end), start),
        probability=min(1.0, max(0.0, float(word.probability))),
    )


def to_emotion(result: EmotionResult | None) -> Emotion | None:
    """The schema's emotion, values clipped to their ranges (None stays None)."""
    if result is None:
        return None
    return Emotion(
        label=result.label,
        valence=_clip(result.valence, -1.0, 1.0),
        arousal=_clip(result.arousal, -1.0, 1.0),
        dominance=_clip(result.dominance, -1.0, 1.0),
        confidence=_clip(result.confidence, 0.0, 1.0),
    )


def _clip(x: float, lo: float, hi: float) -> float:
    return round(min(hi, max(lo, float(x))), 4)
