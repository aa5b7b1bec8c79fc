"""Group VAD speech regions into ASR windows of bounded length."""

from __future__ import annotations

from collections.abc import Sequence

from ethostral_serve.pipeline.types import Chunk, Span


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
