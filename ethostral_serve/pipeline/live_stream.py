"""A live stream's state apart from its transport: decoding PCM, endpointing, drafts and
finals through the stream backends, online speakers, the speaker pass over the whole
stream, and the Session it stores. The WebSocket protocol lives in ``api/stream.py``."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.pipeline.compose import (
    UNDETERMINED_LANGUAGE,
    to_emotion,
    to_ms,
    to_word,
)
from ethostral_serve.pipeline.language_id import LanguageVote
from ethostral_serve.pipeline.ports import StreamBackends
from ethostral_serve.pipeline.stream_speakers import FinalWords, refine_segments
from ethostral_serve.pipeline.streaming import (
    Due,
    OnlineSpeakers,
    StreamOptions,
    StreamTracker,
)
from ethostral_serve.pipeline.types import MAX_SPEAKERS, Span, SpeakerCount, UtteranceResult
from ethostral_serve.pipeline.vad_regions import speech_spans
from ethostral_serve.playback import PlaybackEncoder
from ethostral_serve.schema import Emotion, Segment, Session, now_iso
from ethostral_serve.settings import Settings, stream_speaker_threshold

log = logging.getLogger("ethostral_serve.stream")


class InvalidStreamAudio(ValueError):
    """Audio bytes that are not valid samples (NaN or infinity in ``pcm_f32le``)."""


class StreamParams(BaseModel):
    """Per-stream options, from the query string or a first ``start`` message."""

    model_config = ConfigDict(extra="forbid")

    sample_rate: int = Field(16000, ge=8000, le=192000)
    encoding: Literal["pcm_s16le", "pcm_f32le"] = "pcm_s16le"
    language: str | None = None
    diarize: bool = True
    emotion: bool = True
    adapter: str | None = None
    filename: str = Field("stream", min_length=1, max_length=255)
    num_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    min_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    max_speakers: int | None = Field(None, ge=1, le=MAX_SPEAKERS)
    store_audio: bool = False  # the session keeps the stream's audio for playback

    @model_validator(mode="after")
    def _check_speakers(self) -> StreamParams:
        self.speaker_count()  # raises ValueError when the bounds contradict each other
        return self

    def speaker_count(self) -> SpeakerCount:
        """The speaker count the client gave (all None: none)."""
        return SpeakerCount(self.num_speakers, self.min_speakers, self.max_speakers)


@dataclass
class LiveStream:
    """One stream's state: decoding, endpointing, speakers and finished segments.

    Its model calls block (``step``, ``partial_event``, ``final_events``,
    ``refine_speakers``): the transport runs them on worker threads.
    """

    params: StreamParams
    backends: StreamBackends
    settings: Settings
    language: str | None = None
    tracker: StreamTracker = field(init=False)
    speakers: OnlineSpeakers = field(init=False)
    segments: list[Segment] = field(default_factory=list)
    _finals: list[FinalWords] = field(default_factory=list)  # what refine_speakers rebuilds
    _spans: list[Span] = field(default_factory=list)  # every final's utterance, seconds
    _kept: list[np.ndarray] | None = None  # the stream's audio (int16) while it may refine
    _kept_probs: list[np.ndarray] = field(default_factory=list)  # its VAD probabilities
    _playback: PlaybackEncoder | None = None  # the audio encoded as it comes (store_audio)
    _vad_state: Any = None
    _rest: bytes = b""
    _resampler: Any = None
    _segment_ids: dict[int, str] = field(default_factory=dict)
    _last_speaker: str = "s0"
    _language_vote: LanguageVote | None = None  # finals' languages, until one is sure
    finished: bool = False  # no more audio will come
    bad_audio: str | None = None  # why the audio ended early (invalid samples)
    # One stream is one session: storing it again (after a failure) replaces it.
    session_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    created_at: str = field(default_factory=now_iso)

    def __post_init__(self) -> None:
        s = self.settings.stream
        self.tracker = StreamTracker(
            StreamOptions(
                threshold=s.threshold,
                end_threshold=min(s.end_threshold, s.threshold),
                end_silence_s=s.end_silence_s,
                max_utterance_s=s.max_utterance_s,
                partial_every_s=s.partial_every_s,
            )
        )
        self.speakers = OnlineSpeakers(
            threshold=stream_speaker_threshold(self.settings),
            max_speakers=self.params.speaker_count().upper or self.settings.diarizer.max_speakers,
        )
        self._vad_state = self.backends.new_vad_state()
        if self.language is None:
            self._language_vote = LanguageVote(self.settings.asr.language_windows)
        if self.params.diarize and self.settings.stream.refine_speakers_max_s > 0:
            self._kept = []
        if self.params.store_audio:
            self._playback = PlaybackEncoder()
        if self.params.sample_rate != SAMPLE_RATE:
            import soxr

            self._resampler = soxr.ResampleStream(
                self.params.sample_rate, SAMPLE_RATE, 1, dtype="float32", quality="HQ"
            )

    @property
    def duration_s(self) -> float:
        """Audio received so far, in seconds at 16 kHz."""
        return self.tracker.total_samples / SAMPLE_RATE

    def decode(self, data: bytes, last: bool = False) -> np.ndarray:
        """Raw PCM bytes (any split) → 16 kHz float32 samples.

        Samples that are not finite (``pcm_f32le``) end the audio: the samples before
        them are returned, and :attr:`bad_audio` says what was wrong.
        """
        if self.bad_audio is not None:
            raise InvalidStreamAudio(self.bad_audio)
        width = 2 if self.params.encoding == "pcm_s16le" else 4
        data = self._rest + data
        usable = len(data) - len(data) % width
        self._rest = data[usable:]
        if self.params.encoding == "pcm_s16le":
            x = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        else:
            x = np.frombuffer(data[:usable], dtype="<f4").astype(np.float32)
            finite = np.isfinite(x)
            if not np.all(finite):
                x = x[: int(np.argmin(finite))]
                self._rest = b""
                self.bad_audio = "pcm_f32le audio holds NaN or inf"
        if self._resampler is not None:
            x = self._resampler.resample_chunk(x, last=last)
        return np.asarray(x, dtype=np.float32)

    def step(self, samples: np.ndarray) -> list[Due]:
        """Run the VAD over new samples; what is due (partials coalesced to the newest)."""
        probs, self._vad_state = self.backends.vad_step(samples, self._vad_state)
        due = coalesce(self.tracker.push(samples, probs))
        if self._kept is not None:
            if self.duration_s > self.settings.stream.refine_speakers_max_s:
                self._kept, self._kept_probs = None, []  # too long: online speakers stay
            else:
                pcm = np.clip(np.round(samples * 32767.0), -32768, 32767).astype(np.int16)
                self._kept.append(pcm)
                self._kept_probs.append(probs)
        if self._playback is not None:
            self._playback.offer(samples)  # dropped once the stream was stored
        return due

    def segment_id(self, utterance: int) -> str:
        """The stable id of an utterance's segment."""
        return self._segment_ids.setdefault(utterance, str(uuid.uuid4()))

    def partial_event(self, due: Due) -> dict[str, Any]:
        """Draft the open utterance (blocking)."""
        # A draft's detected language is not kept: a fraction of a second is too little
        # to tell; the finals decide the stream's language (:meth:`_hear_language`).
        text, _ = self.backends.partial(due.audio, self.language, self.params.adapter)
        return self._event("partial", due, text, self._last_speaker, None)

    def final_events(self, dues: Sequence[Due]) -> list[dict[str, Any]]:
        """Recognise finished utterances (in one ASR pass), keep them (blocking)."""
        results = self.backends.finals(
            [d.audio for d in dues], self.language, self.params.emotion, self.params.adapter
        )
        return [self._final(d, r) for d, r in zip(dues, results, strict=True)]

    def _final(self, due: Due, result: UtteranceResult) -> dict[str, Any]:
        """Give a recognised utterance its speaker and keep it."""
        self._hear_language(result, due.end - due.start)
        speaker = "s0"
        if self.params.diarize:
            speaker = self.speakers.assign(self.backends.embed(due.audio))
        self._last_speaker = speaker
        emotion = to_emotion(result.emotion)
        event = self._event("final", due, result.text, speaker, emotion)
        self._spans.append(Span(due.start, due.end))
        if result.text:
            segment = Segment(
                id=event["segment_id"],
                speaker=speaker,
                start_ms=event["start_ms"],
                end_ms=event["end_ms"],
                text=result.text,
                emotion=emotion,
                words=[to_word(w, due.start) for w in result.words],
            )
            self.segments.append(segment)
            at = due.start
            words = [replace(w, start=w.start + at, end=w.end + at) for w in result.words]
            self._finals.append(FinalWords(segment, words))
        return event

    def _hear_language(self, result: UtteranceResult, seconds: float) -> None:
        """Count a final's language until the stream's is decided: the pooled leader of
        the finals so far (:class:`LanguageVote`), once it holds its ``sure`` share or
        ``asr.language_windows`` finals have had words. Until then each final is
        recognised in the language it is heard in."""
        vote = self._language_vote
        if vote is None or not result.words or result.language == UNDETERMINED_LANGUAGE:
            return
        vote.add(result.language_ranking or ((result.language, 1.0),), seconds)
        lead = vote.leader()
        if lead is not None and (vote.full or not vote.unsure):
            self.language, self._language_vote = lead[0], None

    def refine_speakers(self) -> None:
        """Re-speaker the stored segments from a diarization of the whole stream (blocking),
        over the speech regions an upload's VAD would find in it.

        Runs once the last final is in, for diarized streams no longer than
        ``stream.refine_speakers_max_s``. If the diarizer fails, the online speakers stay:
        the session is stored either way.
        """
        kept, self._kept = self._kept, None
        probs, self._kept_probs = self._kept_probs, []
        if kept is None or not self._finals:
            return
        audio = np.concatenate(kept).astype(np.float32) / 32768.0 if kept else np.zeros(0)
        # the speech an upload's VAD would find in this audio (the stream's own VAD gave
        # these probabilities), so the pass diarizes the stream as an upload would; the
        # finals' utterances if it finds none
        regions = speech_spans(
            np.concatenate(probs) if probs else np.zeros(0), audio.size, self.settings.vad
        )
        try:
            turns = self.backends.diarize(
                audio, regions or self._spans, self.params.speaker_count()
            )
        except Exception as exc:  # a failed diarizer must not lose the stream
            log.warning("stream speaker pass failed; online speakers kept: %r", exc)
            return
        self.segments = refine_segments(self._finals, turns)

    def session(self) -> Session:
        """Everything finalised so far, as a Session (``has_audio`` false: :meth:`stored`
        gives the session with its kept audio)."""
        return Session(
            id=self.session_id,
            created_at=self.created_at,
            filename=self.params.filename,
            language=self.language
            or self.params.language
            or self._heard_so_far()
            or UNDETERMINED_LANGUAGE,
            duration_ms=to_ms(self.duration_s),
            segments=list(self.segments),
        )

    def _heard_so_far(self) -> str | None:
        """The leader of a vote that has not decided yet (a short stream)."""
        lead = None if self._language_vote is None else self._language_vote.leader()
        return None if lead is None else lead[0]

    def stored(self) -> tuple[Session, bytes | None]:
        """What storing the stream writes: its session and its audio as Ogg/Opus
        (``store_audio``; None when not kept, or none came), taken together, so
        ``has_audio`` says whether audio came with it even while a step still runs on
        another thread. Ends the audio's encoding when there is some: audio after this
        is not kept, and storing again gives the same audio."""
        audio = None
        if self._playback is not None and self._playback.duration_s > 0:
            audio = self._playback.finish()
        session = self.session()
        return session.model_copy(update={"has_audio": audio is not None}), audio

    def _event(
        self, kind: str, due: Due, text: str, speaker: str, emotion: Emotion | None
    ) -> dict[str, Any]:
        return {
            "type": kind,
            "segment_id": self.segment_id(due.utterance),
            "speaker": speaker,
            "text": text,
            "start_ms": to_ms(due.start),
            "end_ms": max(to_ms(due.end), to_ms(due.start)),
            "emotion": emotion.model_dump() if emotion is not None else None,
        }


def coalesce(due: list[Due]) -> list[Due]:
    """Drop partials made stale by a later partial or a final of the same utterance."""
    out = []
    for i, d in enumerate(due):
        if d.kind == "partial" and any(later.utterance == d.utterance for later in due[i + 1 :]):
            continue
        out.append(d)
    return out
