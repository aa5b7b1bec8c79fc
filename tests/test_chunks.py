"""ASR windows built from VAD regions, and mapping times back."""

from __future__ import annotations

import numpy as np
import pytest

from ethostral_serve.pipeline.chunks import (
    build_chunks,
    outside,
    split_long_regions,
    with_diarized_speech,
    wordless_regions,
)
from ethostral_serve.pipeline.types import Chunk, Span, SpeakerTurn, WordTiming


def test_regions_pack_into_windows_no_longer_than_the_limit() -> None:
    regions = [Span(i * 10.0, i * 10.0 + 6.0) for i in range(10)]  # 60 s of speech
    chunks = build_chunks(regions, max_chunk_s=20.0)
    assert [len(c.regions) for c in chunks] == [3, 3, 3, 1]
    assert all(c.duration <= 20.0 for c in chunks)
    assert [r for c in chunks for r in c.regions] == regions


def test_long_region_is_cut_into_equal_pieces() -> None:
    pieces = split_long_regions([Span(5.0, 75.0)], max_len=28.0)
    assert len(pieces) == 3
    assert pieces[0].start == 5.0 and pieces[-1].end == pytest.approx(75.0)
    assert all(p.duration <= 28.0 + 1e-9 for p in pieces)
    chunks = build_chunks([Span(5.0, 75.0)], max_chunk_s=28.0)
    assert all(c.duration <= 28.0 + 1e-9 for c in chunks)


def test_window_time_maps_back_to_original_timeline() -> None:
    chunk = build_chunks([Span(1.0, 3.0), Span(10.0, 12.5)], max_chunk_s=28.0)[0]
    assert chunk.offsets == (0.0, 2.0)
    assert chunk.to_original(0.5) == pytest.approx(1.5)
    assert chunk.to_original(2.0) == pytest.approx(10.0)
    assert chunk.to_original(3.0) == pytest.approx(11.0)
    assert chunk.to_original(99.0) == pytest.approx(12.5)  # clamped to the last region


def test_a_word_across_a_junction_stays_in_the_region_holding_most_of_it() -> None:
    chunk = build_chunks([Span(1.0, 3.0), Span(10.0, 12.5), Span(20.0, 21.0)], 28.0)[0]
    assert chunk.offsets == (0.0, 2.0, 4.5)
    # inside one region: mapped as it is
    assert chunk.span_to_original(0.5, 1.0) == pytest.approx((1.5, 2.0))
    assert chunk.span_to_original(2.5, 3.0) == pytest.approx((10.5, 11.0))
    # 0.1 s before the junction, 0.3 s after: the second region's, from its start
    assert chunk.span_to_original(1.9, 2.3) == pytest.approx((10.0, 10.3))
    # mostly before it: the first region's, to its end (not across the 7 s of silence)
    assert chunk.span_to_original(1.6, 2.1) == pytest.approx((2.6, 3.0))
    # an equal share on both sides: the earlier region
    assert chunk.span_to_original(1.8, 2.2) == pytest.approx((2.8, 3.0))
    # over three regions: the middle one holds the most
    assert chunk.span_to_original(1.5, 4.7) == pytest.approx((10.0, 12.5))
    # a point, and a span past the window's end
    assert chunk.span_to_original(2.0, 2.0) == pytest.approx((10.0, 10.0))
    assert chunk.span_to_original(6.0, 7.0) == pytest.approx((21.0, 21.0))


def test_window_audio_is_the_regions_back_to_back() -> None:
    audio = np.arange(16000 * 5, dtype=np.float32)
    chunk = Chunk((Span(0.5, 1.0), Span(3.0, 3.25)), (0.0, 0.5))
    out = chunk.samples(audio, 16000)
    assert len(out) == 8000 + 4000
    assert out[0] == 8000 and out[8000] == 48000


def test_empty_regions_give_no_chunks() -> None:
    assert build_chunks([], 28.0) == []
    assert build_chunks([Span(2.0, 2.0)], 28.0) == []


def _pairs(spans: list[Span]) -> list[tuple[float, float]]:
    return [(round(s.start, 6), round(s.end, 6)) for s in spans]


def test_outside_keeps_what_the_cover_leaves() -> None:
    spans = [Span(0.0, 10.0), Span(12.0, 13.0), Span(9.0, 11.0)]  # unsorted, overlapping
    cover = [Span(2.0, 3.0), Span(2.5, 4.0), Span(10.5, 12.5), Span(20.0, 21.0)]
    assert _pairs(outside(spans, cover)) == [(0.0, 2.0), (4.0, 10.5), (12.5, 13.0)]
    assert outside(spans, [Span(-1.0, 30.0)]) == []
    assert _pairs(outside([Span(1.0, 2.0)], [])) == [(1.0, 2.0)]


def test_diarized_speech_adds_long_pieces_only() -> None:
    regions = [Span(5.0, 6.0), Span(1.0, 2.0)]
    turns = [
        SpeakerTurn(0.8, 2.2, "a"),  # edges of 0.2 s on both sides of a region: dropped
        SpeakerTurn(3.0, 4.0, "b"),  # heard only by the diarizer: added on its own
        SpeakerTurn(5.5, 7.0, "a"),  # runs 1 s past a region: joins it
    ]
    joined = with_diarized_speech(regions, turns, 0.5)
    assert _pairs(joined) == [(1.0, 2.0), (3.0, 4.0), (5.0, 7.0)]
    assert _pairs(with_diarized_speech(regions, turns, 1.5)) == [(1.0, 2.0), (5.0, 6.0)]
    assert _pairs(with_diarized_speech(regions, turns, 0.0)) == [(1.0, 2.0), (5.0, 6.0)]
    assert _pairs(with_diarized_speech(regions, [], 0.5)) == [(1.0, 2.0), (5.0, 6.0)]


def test_a_piece_joins_both_regions_it_bridges_but_touching_regions_stay_apart() -> None:
    # The VAD's regions 0-1 and 1-2 touch (their pads shared a gap) and stay two regions,
    # as without the diarizer; the piece 2-3 bridges 1-2 and 3-4 into one stretch.
    regions = [Span(0.0, 1.0), Span(1.0, 2.0), Span(3.0, 4.0)]
    joined = with_diarized_speech(regions, [SpeakerTurn(0.0, 4.0, "a")], 0.5)
    assert _pairs(joined) == [(0.0, 1.0), (1.0, 4.0)]


def _word(start: float, end: float) -> WordTiming:
    return WordTiming(" w", start, end, 0.9)


def test_wordless_regions_of_packed_windows_are_listed() -> None:
    packed = build_chunks([Span(1.0, 2.0), Span(5.0, 6.5), Span(8.0, 8.3), Span(9.0, 10.0)], 28.0)
    alone = Chunk((Span(40.0, 42.0),), (0.0,))  # already read alone: never listed
    words = [_word(1.2, 1.5), _word(9.8, 10.3)]  # the second word's middle: 10.05 s
    assert len(packed) == 1
    # 5.0-6.5 holds no word; 8.0-8.3 neither, but it is shorter than 0.5 s; 9.0-10.0
    # holds none by its middle either
    assert wordless_regions([*packed, alone], words, 0.5) == [Span(5.0, 6.5), Span(9.0, 10.0)]
    assert wordless_regions([*packed, alone], words, 0.2) == [
        Span(5.0, 6.5),
        Span(8.0, 8.3),
        Span(9.0, 10.0),
    ]
    # a word whose middle lies on a region's edge counts for it
    assert wordless_regions(packed, [*words, _word(4.8, 5.2), _word(9.9, 10.1)], 0.5) == []
    assert wordless_regions(packed, words, 0.0) == []  # off
    assert wordless_regions(packed, [], 0.5) == [Span(1.0, 2.0), Span(5.0, 6.5), Span(9.0, 10.0)]
