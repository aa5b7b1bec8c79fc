"""refine_segments: a finished stream's segments re-speakered from a whole-stream diarization."""

from __future__ import annotations

from ethostral_serve.pipeline.stream_speakers import FinalWords, refine_segments
from ethostral_serve.pipeline.types import SpeakerTurn, WordTiming
from ethostral_serve.schema import Emotion, Segment

EMOTION = Emotion(label="Happy", valence=0.5, arousal=0.3, dominance=0.2, confidence=0.7)


def _final(seg_id: str, speaker: str, start: float, end: float, words) -> FinalWords:
    timed = [WordTiming(text, a, b, 0.9) for text, a, b in words]
    segment = Segment(
        id=seg_id,
        speaker=speaker,
        start_ms=round(start * 1000),
        end_ms=round(end * 1000),
        text="".join(w.text for w in timed).strip(),
        emotion=EMOTION,
        words=[],
    )
    return FinalWords(segment, timed)


def test_a_final_holding_two_voices_is_split_where_the_speaker_changes() -> None:
    finals = [
        _final(
            "a",
            "s0",
            0.0,
            4.2,
            [(" Hello", 0.2, 0.6), (" there.", 0.7, 1.1), (" Hi", 2.5, 2.8), (" you.", 2.9, 4.0)],
        ),
        _final("b", "s0", 5.0, 6.5, [(" Fine.", 5.2, 6.3)]),
    ]
    turns = [SpeakerTurn(0.1, 1.5, "x"), SpeakerTurn(2.3, 4.1, "y"), SpeakerTurn(5.1, 6.4, "x")]
    out = refine_segments(finals, turns)
    assert [(s.speaker, s.text) for s in out] == [
        ("s0", "Hello there."),
        ("s1", "Hi you."),
        ("s0", "Fine."),
    ]
    # the first piece keeps the final's id (and start); the new piece gets its own id
    assert out[0].id == "a" and out[2].id == "b"
    assert out[1].id not in {"a", "b"}
    assert (out[0].start_ms, out[0].end_ms) == (0, 1100)  # ends at its last word
    assert (out[1].start_ms, out[1].end_ms) == (2500, 4200)  # starts at its first word
    assert all(s.emotion == EMOTION for s in out)  # read from the whole utterance
    assert [w.word for w in out[1].words] == ["Hi", "you."]
    assert (out[1].words[0].start_ms, out[1].words[-1].end_ms) == (2500, 4000)


def test_speakers_are_renamed_in_order_of_first_appearance() -> None:
    finals = [
        _final("a", "s0", 0.0, 1.0, [(" One.", 0.1, 0.9)]),
        _final("b", "s1", 2.0, 3.0, [(" Two.", 2.1, 2.9)]),
        _final("c", "s0", 4.0, 5.0, [(" Three.", 4.1, 4.9)]),
    ]
    turns = [SpeakerTurn(0, 1, "s7"), SpeakerTurn(2, 3, "s2"), SpeakerTurn(4, 5, "s2")]
    out = refine_segments(finals, turns)
    assert [s.speaker for s in out] == ["s0", "s1", "s1"]
    assert [s.id for s in out] == ["a", "b", "c"]


def test_without_turns_the_online_speakers_stay() -> None:
    finals = [
        _final("a", "s0", 0, 1, [(" A.", 0.1, 0.5)]),
        _final("b", "s1", 2, 3, [(" B.", 2.1, 2.5)]),
    ]
    out = refine_segments(finals, [])
    assert [(s.id, s.speaker, s.text) for s in out] == [("a", "s0", "A."), ("b", "s1", "B.")]


def test_a_final_without_words_takes_the_speaker_covering_it() -> None:
    no_words = _final("a", "s0", 0.0, 2.0, [])
    no_words = FinalWords(no_words.segment.model_copy(update={"text": "Mm."}), [])
    finals = [_final("z", "s0", 3.0, 4.0, [(" Yes.", 3.1, 3.8)]), no_words]
    turns = [SpeakerTurn(0.0, 0.4, "p"), SpeakerTurn(0.4, 2.0, "q"), SpeakerTurn(3.0, 4.0, "p")]
    out = refine_segments(finals, turns)
    assert [(s.id, s.speaker, s.text) for s in out] == [("z", "s0", "Yes."), ("a", "s1", "Mm.")]


def test_blank_tokens_never_make_an_empty_segment() -> None:
    finals = [
        _final("a", "s0", 0.0, 3.0, [(" Yes", 0.1, 0.5), (" ", 1.0, 1.2), (" no.", 2.0, 2.5)])
    ]
    turns = [SpeakerTurn(0.0, 0.8, "p"), SpeakerTurn(0.9, 1.3, "q"), SpeakerTurn(1.9, 3.0, "p")]
    out = refine_segments(finals, turns)
    assert [(s.speaker, s.text) for s in out] == [("s0", "Yes no.")]
    assert out[0].id == "a" and (out[0].start_ms, out[0].end_ms) == (0, 3000)


def test_overlap_tie_keeps_the_voice_being_transcribed() -> None:
    # both speakers cover " too" fully: it stays with the previous word's speaker
    finals = [_final("a", "s0", 0.0, 2.0, [(" Me", 0.1, 0.5), (" too.", 1.0, 1.4)])]
    turns = [SpeakerTurn(0.0, 1.6, "p"), SpeakerTurn(0.9, 2.0, "q")]
    out = refine_segments(finals, turns)
    assert [(s.speaker, s.text) for s in out] == [("s0", "Me too.")]
