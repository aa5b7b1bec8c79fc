"""Words + speaker turns → segments."""

from __future__ import annotations

from ethostral_serve.pipeline.segments import (
    assign_speakers,
    extend_to_speech,
    group_words,
    rename_speakers,
)
from ethostral_serve.pipeline.types import Span, SpeakerTurn, WordTiming


def _words(*items: tuple[str, float, float]) -> list[WordTiming]:
    return [WordTiming(f" {t}", s, e) for t, s, e in items]


def test_words_take_the_speaker_they_overlap_most() -> None:
    turns = [SpeakerTurn(0.0, 2.0, "s0"), SpeakerTurn(2.0, 4.0, "s1")]
    words = _words(("a", 0.1, 0.5), ("b", 1.8, 2.6), ("c", 3.0, 3.5), ("d", 5.0, 5.5))
    assert assign_speakers(words, turns) == ["s0", "s1", "s1", "s1"]


def test_words_outside_every_turn_take_the_nearest() -> None:
    turns = [SpeakerTurn(0.0, 1.0, "s0"), SpeakerTurn(10.0, 11.0, "s1")]
    words = _words(("a", 1.2, 1.4), ("b", 9.0, 9.5))
    assert assign_speakers(words, turns) == ["s0", "s1"]


def test_without_turns_everyone_is_s0() -> None:
    assert assign_speakers(_words(("a", 0, 1), ("b", 1, 2)), []) == ["s0", "s0"]


def test_segments_split_at_speaker_changes_and_pauses() -> None:
    words = _words(
        ("hello", 0.0, 0.4),
        ("there.", 0.5, 0.9),  # s0
        ("hi", 1.0, 1.2),  # s1
        ("again", 1.3, 1.6),  # s1
        ("later", 4.0, 4.3),  # s1 after a 2.4 s pause
    )
    speakers = ["s0", "s0", "s1", "s1", "s1"]
    segs = group_words(words, speakers, max_segment_s=30.0, pause_split_s=1.0)
    assert [(s.speaker, s.text) for s in segs] == [
        ("s0", "hello there."),
        ("s1", "hi again"),
        ("s1", "later"),
    ]
    assert segs[0].start == 0.0 and segs[0].end == 0.9


def test_long_segments_split_at_a_sentence_end_within_the_limit() -> None:
    words = [WordTiming(" one.", 0.0, 1.0)]
    words += [WordTiming(f" w{i}", 1.0 + i * 0.5, 1.4 + i * 0.5) for i in range(30)]
    segs = group_words(words, ["s0"] * len(words), max_segment_s=10.0, pause_split_s=1.0)
    assert segs[0].text == "one."
    assert all(s.end - s.start <= 10.0 for s in segs)
    assert sum(len(s.words) for s in segs) == len(words)


def test_blank_words_are_dropped() -> None:
    words = [WordTiming(" ", 0.0, 0.1), WordTiming(" yes", 0.2, 0.4)]
    segs = group_words(words, ["s0", "s0"], 30.0, 1.0)
    assert [s.text for s in segs] == ["yes"]


def test_rename_in_order_of_first_appearance() -> None:
    assert rename_speakers(["x", "y", "x", "z", "y"]) == ["s0", "s1", "s0", "s2", "s1"]
    assert rename_speakers(["s2", "s0"]) == ["s0", "s1"]


# ---------------------------------------------------------------- extend_to_speech


def test_edges_move_out_to_the_speakers_turn_within_the_bound() -> None:
    spans = [Span(1.2, 3.0), Span(6.0, 7.0)]
    turns = [SpeakerTurn(0.9, 3.3, "a"), SpeakerTurn(4.0, 8.5, "b")]
    out = extend_to_speech(spans, ["a", "b"], turns, [], max_s=1.0)
    assert out == [Span(0.9, 3.3), Span(5.0, 8.0)]  # b's turn is longer than the bound


def test_a_segment_never_reaches_into_its_neighbours() -> None:
    spans = [Span(1.0, 2.0), Span(2.4, 3.0)]
    turns = [SpeakerTurn(0.5, 2.6, "a"), SpeakerTurn(1.8, 3.5, "b")]
    out = extend_to_speech(spans, ["a", "b"], turns, [], max_s=1.0)
    assert out == [Span(0.5, 2.4), Span(2.4, 3.5)]


def test_only_the_segments_own_speaker_counts() -> None:
    # another speaker's turn around the words moves nothing
    out = extend_to_speech([Span(2.0, 3.0)], ["a"], [SpeakerTurn(0.0, 9.0, "b")], [], 1.0)
    assert out == [Span(2.0, 3.0)]


def test_undiarized_segments_follow_the_speech_regions() -> None:
    regions = [Span(0.5, 1.5), Span(1.8, 4.4)]
    out = extend_to_speech([Span(2.0, 4.0)], ["s0"], [], regions, max_s=1.0)
    assert out == [Span(1.8, 4.4)]


def test_extension_off_or_nothing_to_extend_keeps_the_spans() -> None:
    spans = [Span(2.0, 3.0)]
    turns = [SpeakerTurn(1.0, 4.0, "a")]
    assert extend_to_speech(spans, ["a"], turns, [], max_s=0.0) == spans
    assert extend_to_speech(spans, ["a"], [], [], max_s=1.0) == spans
    assert extend_to_speech([], [], turns, [], max_s=1.0) == []


def test_a_turn_ending_just_before_the_first_word_still_holds_it() -> None:
    # word timing and turn edges disagree by a few ms: the turn still counts
    out = extend_to_speech([Span(2.03, 2.8)], ["a"], [SpeakerTurn(1.5, 2.0, "a")], [], 1.0)
    assert out == [Span(1.5, 2.8)]
