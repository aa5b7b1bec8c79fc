"""The orchestration in ``pipeline.compose``, isolated from the models by small fakes."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime

import numpy as np
import pytest

from ethostral_serve.audio import Audio
from ethostral_serve.pipeline.compose import TranscribeOptions, transcribe
from ethostral_serve.pipeline.types import (
    Chunk,
    EmotionResult,
    Span,
    SpeakerCount,
    SpeakerTurn,
    Transcript,
    WordTiming,
)
from ethostral_serve.settings import Settings


class FakeVad:
    def __init__(self, regions: list[Span]) -> None:
        self.regions = regions

    def speech_regions(self, samples: np.ndarray) -> list[Span]:
        return self.regions


class FakeDiarizer:
    def __init__(self, turns: list[SpeakerTurn], error: Exception | None = None) -> None:
        self.turns = turns
        self.error = error
        self.calls = 0
        self.speakers: SpeakerCount | None = None

    def diarize(
        self,
        samples: np.ndarray,
        regions: Sequence[Span],
        speakers: SpeakerCount | None = None,
    ) -> list[SpeakerTurn]:
        self.calls += 1
        self.speakers = speakers
        if self.error is not None:
            raise self.error
        return self.turns


class FakeModel:
    """Says one word per speech region, halfway through it; emotion from span length."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.emotion_spans: list[Span] = []

    def check_language(self, language: str | None) -> str | None:
        return language

    def check_adapter(self, adapter: str | None) -> str | None:
        return adapter

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        adapter: str | None = None,
    ) -> Transcript:
        self.chunks = list(chunks)
        self.adapter = adapter
        words = []
        for chunk in chunks:
            for i, region in enumerate(chunk.regions):
                mid = chunk.to_original(chunk.offsets[i] + region.duration / 2)
                words.append(WordTiming(f" w{len(words)}", mid - 0.1, mid + 0.1, 0.9))
        return Transcript(language or "fr", 0.8, words)

    def emotions(
        self, samples: np.ndarray, transcript: Transcript, spans: Sequence[Span]
    ) -> list[EmotionResult]:
        self.emotion_spans = list(spans)
        return [EmotionResult("Sad", 0.7, -0.63, -0.27, -0.33) for _ in spans]


def _audio(seconds: float) -> Audio:
    return Audio(np.zeros(int(seconds * 16000), np.float32))


REGIONS = [Span(1.0, 2.0), Span(2.5, 3.5), Span(10.0, 11.0)]


def _run(
    options: TranscribeOptions,
    turns: list[SpeakerTurn] | None = None,
    diarized_speech_min_s: float = 0.0,
):
    """One run over three VAD regions. The recogniser reads only the VAD's regions unless
    ``diarized_speech_min_s`` > 0 (tested on its own below)."""
    model = FakeModel()
    diarizer = FakeDiarizer(turns if turns is not None else [])
    settings = Settings.model_validate({"vad": {"diarized_speech_min_s": diarized_speech_min_s}})
    session = transcribe(
        _audio(12.0),
        "talk.wav",
        options,
        vad=FakeVad(list(REGIONS)),
        diarizer=diarizer,
        model=model,
        settings=settings,
    )
    return session, model, diarizer


def _read(model: FakeModel) -> list[tuple[float, float]]:
    """The stretches of audio the recogniser was given, in order."""
    return [(r.start, r.end) for chunk in model.chunks for r in chunk.regions]


def test_session_has_spec_fields_and_ms_times() -> None:
    turns = [SpeakerTurn(0.5, 3.0, "spk_B"), SpeakerTurn(3.0, 12.0, "spk_A")]
    session, model, diarizer = _run(TranscribeOptions(), turns)
    uuid.UUID(session.id)
    datetime.fromisoformat(session.created_at)
    assert session.filename == "talk.wav"
    assert session.language == "fr"
    assert session.duration_ms == 12000
    # w0 (1.5 s) lies in spk_B's turn and w2 (10.5 s) in spk_A's: renamed by first
    # appearance, spk_B becomes s0 and spk_A s1.
    speakers = [s.speaker for s in session.segments]
    assert speakers[0] == "s0" and speakers[-1] == "s1"
    first = session.segments[0]
    # the word w0 is 1.4-1.6 s; the segment reaches out to spk_B's turn (0.5-3.0 s) by at
    # most 1 s, while the word keeps its time and emotion reads the word's span
    assert (first.start_ms, first.end_ms) == (500, 2600)
    assert [(w.word, w.start_ms, w.end_ms) for w in first.words] == [("w0", 1400, 1600)]
    assert (model.emotion_spans[0].start, model.emotion_spans[0].end) == (1.4, 1.6)
    assert all(s.emotion is not None and s.emotion.label == "Sad" for s in session.segments)
    assert len(model.emotion_spans) == len(session.segments)
    assert diarizer.calls == 1


def test_requested_speaker_count_reaches_the_diarizer() -> None:
    count = SpeakerCount(min=2, max=3)
    _, _, diarizer = _run(TranscribeOptions(speakers=count), [SpeakerTurn(0, 12, "x")])
    assert diarizer.speakers == count


def test_overlapping_turns_give_each_word_one_speaker() -> None:
    # A talks throughout; B talks over A from 2.4 s on. w1 (2.9-3.1 s) lies inside both
    # turns: it stays with the speaker of the word before it, and no word is doubled.
    turns = [SpeakerTurn(0.5, 12.0, "A"), SpeakerTurn(2.4, 3.6, "B")]
    session, _, _ = _run(TranscribeOptions(), turns)
    words = [(w.word, s.speaker) for s in session.segments for w in s.words]
    assert words == [("w0", "s0"), ("w1", "s0"), ("w2", "s0")]


def test_pause_longer_than_setting_splits_same_speaker() -> None:
    session, _, _ = _run(TranscribeOptions(diarize=False))
    # words at 1.5, 3.0 and 10.5 s: the 7 s pause splits, the 1.3 s gap (>= 1.0) too
    assert [s.text for s in session.segments] == ["w0", "w1", "w2"]
    assert {s.speaker for s in session.segments} == {"s0"}


def test_no_diarize_never_calls_the_diarizer() -> None:
    _, _, diarizer = _run(TranscribeOptions(diarize=False), [SpeakerTurn(0, 12, "x")])
    assert diarizer.calls == 0


def test_emotion_off_gives_null_and_skips_the_model() -> None:
    session, model, _ = _run(TranscribeOptions(emotion=False))
    assert session.segments and all(s.emotion is None for s in session.segments)
    assert model.emotion_spans == []


def test_requested_language_passes_through() -> None:
    session, _, _ = _run(TranscribeOptions(language="de"))
    assert session.language == "de"


def test_silence_gives_an_empty_session() -> None:
    model = FakeModel()
    session = transcribe(
        _audio(3.0),
        "quiet.wav",
        TranscribeOptions(),
        vad=FakeVad([]),
        diarizer=FakeDiarizer([]),
        model=model,
        settings=Settings(),
    )
    assert session.segments == [] and session.language == "und"
    assert session.duration_ms == 3000
    assert model.chunks == []


def test_recogniser_also_reads_speech_only_the_diarizer_heard() -> None:
    # The diarizer hears B from 5.0 to 7.0 s, where the VAD found nothing, and A a little
    # past the VAD's first region (2.0-2.3 s: shorter than 0.5 s, an edge, left out).
    turns = [
        SpeakerTurn(1.0, 2.3, "A"),
        SpeakerTurn(5.0, 7.0, "B"),
        SpeakerTurn(10.0, 11.0, "A"),
    ]
    session, model, diarizer = _run(TranscribeOptions(), turns, diarized_speech_min_s=0.5)
    assert diarizer.calls == 1
    assert _read(model) == [(1.0, 2.0), (2.5, 3.5), (5.0, 7.0), (10.0, 11.0)]
    # the fake model says a word in each stretch: the one at 6 s is B's
    assert [(s.text, s.speaker) for s in session.segments] == [
        ("w0", "s0"),
        ("w1", "s0"),
        ("w2", "s1"),
        ("w3", "s0"),
    ]


def test_diarized_speech_touching_a_region_joins_it() -> None:
    # 3.5-4.5 s is heard only by the diarizer and continues the VAD's second region:
    # the recogniser reads 2.5-4.5 s as one stretch, the other regions as they were.
    turns = [SpeakerTurn(2.5, 4.5, "A")]
    _, model, _ = _run(TranscribeOptions(), turns, diarized_speech_min_s=0.5)
    assert _read(model) == [(1.0, 2.0), (2.5, 4.5), (10.0, 11.0)]


def test_diarized_speech_is_not_read_when_off_or_undiarized() -> None:
    turns = [SpeakerTurn(5.0, 7.0, "B")]
    _, model, diarizer = _run(TranscribeOptions(), turns, diarized_speech_min_s=0.0)
    assert _read(model) == [(r.start, r.end) for r in REGIONS] and diarizer.calls == 1
    _, model, diarizer = _run(TranscribeOptions(diarize=False), turns, diarized_speech_min_s=0.5)
    assert _read(model) == [(r.start, r.end) for r in REGIONS] and diarizer.calls == 0


@pytest.mark.parametrize("min_s", [0.0, 0.5])
def test_a_failing_diarizer_fails_the_run(min_s: float) -> None:
    model = FakeModel()
    settings = Settings.model_validate({"vad": {"diarized_speech_min_s": min_s}})
    with pytest.raises(RuntimeError, match="replica died"):
        transcribe(
            _audio(12.0),
            "talk.wav",
            TranscribeOptions(),
            vad=FakeVad(list(REGIONS)),
            diarizer=FakeDiarizer([], error=RuntimeError("diarizer replica died")),
            model=model,
            settings=settings,
        )
    if min_s > 0:  # diarization went first, so no recognition was wasted
        assert model.chunks == []


class QuietLostWhenPacked(FakeModel):
    """Loses the word of ``quiet`` when it is read in a window beside other regions (as
    Whisper can a far-field voice next to louder speech), and says it when read alone."""

    def __init__(self, quiet: Span) -> None:
        super().__init__()
        self.quiet = quiet
        self.calls: list[tuple[list[Chunk], str | None]] = []

    def transcribe(
        self,
        samples: np.ndarray,
        chunks: Sequence[Chunk],
        language: str | None,
        adapter: str | None = None,
    ) -> Transcript:
        self.calls.append((list(chunks), language))
        heard = super().transcribe(samples, chunks, language, adapter)
        packed = [r for c in chunks if len(c.regions) > 1 for r in c.regions]
        lost = self.quiet in packed
        words = [
            w
            for w in heard.words
            if not (lost and self.quiet.start <= (w.start + w.end) / 2 <= self.quiet.end)
        ]
        return Transcript(heard.language, heard.language_probability, words, "state")


def _run_quiet(reread_s: float, language: str | None = None):
    model = QuietLostWhenPacked(REGIONS[1])
    settings = Settings.model_validate(
        {"vad": {"diarized_speech_min_s": 0.0, "reread_wordless_s": reread_s}}
    )
    session = transcribe(
        _audio(12.0),
        "talk.wav",
        TranscribeOptions(language=language, emotion=False),
        vad=FakeVad(list(REGIONS)),
        diarizer=FakeDiarizer([SpeakerTurn(0.0, 12.0, "A")]),
        model=model,
        settings=settings,
    )
    return session, model


def test_a_region_packed_windows_lost_is_read_again_alone() -> None:
    session, model = _run_quiet(0.5)
    # the first pass packs all three regions and loses the middle one's word; it is then
    # read alone, in the language the first pass settled on ("fr": the fake's detection)
    assert [(len(c), lang) for c, lang in model.calls] == [(1, None), (1, "fr")]
    assert model.calls[1][0] == [Chunk((REGIONS[1],), (0.0,))]
    starts = [w.start_ms for s in session.segments for w in s.words]
    assert len(starts) == 3 and starts == sorted(starts)
    assert any(2500 <= w.start_ms <= 3500 for s in session.segments for w in s.words)


def test_a_requested_language_is_kept_when_reading_again() -> None:
    _, model = _run_quiet(0.5, language="de")
    assert [lang for _, lang in model.calls] == ["de", "de"]


def test_reading_again_can_be_turned_off() -> None:
    session, model = _run_quiet(0.0)
    assert len(model.calls) == 1
    words = [w for s in session.segments for w in s.words]
    assert len(words) == 2 and not any(2500 <= w.start_ms <= 3500 for w in words)
