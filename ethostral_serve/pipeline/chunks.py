"""Group VAD speech regions into ASR windows of bounded length."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ethostral_serve.pipeline.types import Chunk, Span, SpeakerTurn, WordTiming


def split_long_regions(regions: Sequence[Span], max_len: float) -> list[Span]:
    """Cut any region longer than ``max_len`` into equal pieces no longer than it."""
    out: list[Span] = []
    for r in regions:
        if r.duration <= max_len:
            out.append(r)
            continue
        pieces = int(-(-r.duration // max_len))
        step = r.duration / pieces
        out.extend(
            Span(r.start + i * step, min(r.end, r.start + (i + 1) * step)) for i in range(pieces)
        )
    return out


def build_chunks(regions: Sequence[Span], max_chunk_s: float) -> list[Chunk]:
    """Pack consecutive speech regions into windows of at most ``max_chunk_s`` of speech.

    Silence between regions is dropped; each chunk remembers where its regions sit so
    times can be mapped back to the original timeline.
    """
    chunks: list[Chunk] = []
    current: list[Span] = []
    offsets: list[float] = []
    length = 0.0
    for region in split_long_regions(sorted(regions, key=lambda s: s.start), max_chunk_s):
        if region.duration <= 0:
            continue
        if current and length + region.duration > max_chunk_s:
            chunks.append(Chunk(tuple(current), tuple(offsets)))
            current, offsets, length = [], [], 0.0
        current.append(region)
        offsets.append(length)
        length += region.duration
    if current:
        chunks.append(Chunk(tuple(current), tuple(offsets)))
    return chunks


def wordless_regions(
    chunks: Sequence[Chunk], words: Sequence[WordTiming], min_s: float
) -> list[Span]:
    """Regions at least ``min_s`` long, read in a window beside other regions, in which
    no word's middle lies (``words`` on the original timeline). Whisper can pass over a
    quiet far-field voice packed beside louder speech and write it when the region is
    read alone; regions already read alone are not listed. ``min_s`` <= 0: none."""
    if min_s <= 0:
        return []
    middles = np.sort(np.array([(w.start + w.end) / 2 for w in words], dtype=np.float64))
    out: list[Span] = []
    for chunk in chunks:
        if len(chunk.regions) < 2:
            continue
        for r in chunk.regions:
            if r.duration < min_s:
                continue
            inside = np.searchsorted(middles, r.end, "right") - np.searchsorted(middles, r.start)
            if inside == 0:
                out.append(r)
    return out


_TOUCH_S = 1e-6  # spans this close count as touching


def _merged(spans: Sequence[Span]) -> list[Span]:
    """``spans`` sorted, with overlapping or touching ones joined."""
    out: list[Span] = []
    for s in sorted(spans, key=lambda s: s.start):
        if out and s.start <= out[-1].end:
            out[-1] = Span(out[-1].start, max(out[-1].end, s.end))
        else:
            out.append(s)
    return out


def outside(spans: Sequence[Span], cover: Sequence[Span]) -> list[Span]:
    """The parts of ``spans`` that no span of ``cover`` overlaps, in time order."""
    cuts = _merged([c for c in cover if c.end > c.start])
    out: list[Span] = []
    first = 0  # both lists are sorted and disjoint: one pass over each
    for s in _merged([s for s in spans if s.end > s.start]):
        while first < len(cuts) and cuts[first].end <= s.start:
            first += 1
        start = s.start
        k = first
        while k < len(cuts) and cuts[k].start < s.end:
            if cuts[k].start > start:
                out.append(Span(start, cuts[k].start))
            start = max(start, cuts[k].end)
            k += 1
        if s.end > start:
            out.append(Span(start, s.end))
    return out


def with_diarized_speech(
    regions: Sequence[Span], turns: Sequence[SpeakerTurn], min_piece_s: float
) -> list[Span]:
    """The VAD's ``regions`` joined with the diarizer's speech that lies outside them, in
    pieces of at least ``min_piece_s`` (shorter ones are edges the VAD's padding already
    holds). Far-field voices the VAD scores low are often heard by the overlap-aware
    segmentation; the recogniser then reads them too. ``min_piece_s`` <= 0: ``regions``.
    """
    ordered = sorted(regions, key=lambda r: r.start)
    if min_piece_s <= 0 or not turns:
        return ordered
    heard = [Span(t.start, t.end) for t in turns]
    extra = [p for p in outside(heard, ordered) if p.duration >= min_piece_s]
    if not extra:
        return ordered
    # A piece joins the regions it touches (one stretch of audio for the recogniser);
    # regions that touch each other stay apart, as they are without the diarizer.
    tagged = sorted(
        [(r, False) for r in ordered] + [(p, True) for p in extra], key=lambda t: t[0].start
    )
    out: list[Span] = []
    last_is_piece = False
    for span, is_piece in tagged:
        if out and (is_piece or last_is_piece) and span.start <= out[-1].end + _TOUCH_S:
            out[-1] = Span(out[-1].start, max(out[-1].end, span.end))
            last_is_piece = is_piece
            continue
        out.append(span)
        last_is_piece = is_piece
    return out
