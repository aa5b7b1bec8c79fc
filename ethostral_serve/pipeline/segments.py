"""Turn recognised words and speaker turns into transcript segments."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass, field

from ethostral_serve.pipeline.types import Span, SpeakerTurn, WordTiming

DEFAULT_SPEAKER = "s0"
_TIE_S = 0.02  # two speakers covering a word this close to equally are tied
_SENTENCE_END = (".", "?", "!", "。", "？", "！")


@dataclass
class DraftSegment:
    """A segment before emotion and ids: one speaker's consecutive words."""

    speaker: str
    words: list[WordTiming] = field(default_factory=list)

    @property
    def start(self) -> float:
        """Start of the first word (s)."""
        return self.words[0].start

    @property
    def end(self) -> float:
        """End of the last word (s)."""
        return self.words[-1].end

    @property
    def span(self) -> Span:
        """The segment's time span."""
        return Span(self.start, self.end)

    @property
    def text(self) -> str:
        """The words joined as Whisper spelled them (its words carry their spaces)."""
        return "".join(w.text for w in self.words).strip()


def assign_speakers(words: Sequence[WordTiming], turns: Sequence[SpeakerTurn]) -> list[str]:
    """The speaker of each word: the one whose turns overlap it most, else the nearest.

    Turns of different speakers may overlap (two people talking at once), but each word
    goes to exactly one speaker. Where two speakers' turns cover a word (nearly) equally,
    the word stays with the speaker of the previous word when that is one of them: a
    recogniser follows the voice it was already transcribing.
    """
    if not turns:
        return [DEFAULT_SPEAKER] * len(words)
    ordered = sorted(turns, key=lambda t: t.start)
    longest = max(t.end - t.start for t in ordered)
    out: list[str] = []
    j = 0
    previous: str | None = None
    for w in words:
        while j < len(ordered) and ordered[j].start + longest < w.start - 30.0:
            j += 1  # turns that ended long before this word cannot matter any more
        cover: dict[str, float] = {}
        nearest, nearest_distance = ordered[min(j, len(ordered) - 1)].speaker, None
        mid = 0.5 * (w.start + w.end)
        for t in ordered[j:]:
            if t.start > w.end + 30.0:
                break
            overlap = min(w.end, t.end) - max(w.start, t.start)
            if overlap > 0:
                cover[t.speaker] = cover.get(t.speaker, 0.0) + overlap
            distance = 0.0 if t.start <= mid <= t.end else min(abs(mid - t.start), abs(mid - t.end))
            if nearest_distance is None or distance < nearest_distance:
                nearest, nearest_distance = t.speaker, distance
        if cover:
            top = max(cover.values())
            tied = [s for s, v in cover.items() if v >= top - _TIE_S]
            best = previous if previous in tied else max(cover, key=lambda s: cover[s])
        else:
            best = nearest
        out.append(best)
        previous = best
    return out


def group_words(
    words: Sequence[WordTiming],
    speakers: Sequence[str],
    max_segment_s: float,
    pause_split_s: float,
) -> list[DraftSegment]:
    """Group words into segments, splitting at speaker changes and long pauses.

    A segment that would grow past ``max_segment_s`` is split, at the last sentence end
    inside it when there is one, else before the word that would overflow it.
    """
    segments: list[DraftSegment] = []
    current: DraftSegment | None = None
    for word, speaker in zip(words, speakers, strict=True):
        if not word.text.strip():
            continue
        if current is not None:
            gap = word.start - current.end
            if speaker != current.speaker or gap >= pause_split_s:
                segments.append(current)
                current = None
            elif word.end - current.start > max_segment_s:
                head, tail = _split_at_sentence(current)
                segments.append(head)
                current = tail
        if current is None:
            current = DraftSegment(speaker)
        current.words.append(word)
    if current is not None and current.words:
        segments.append(current)
    return [s for s in segments if s.words]


def _split_at_sentence(segment: DraftSegment) -> tuple[DraftSegment, DraftSegment | None]:
    for i in range(len(segment.words) - 1, 0, -1):
        if segment.words[i - 1].text.rstrip().endswith(_SENTENCE_END):
            return (
                DraftSegment(segment.speaker, segment.words[:i]),
                DraftSegment(segment.speaker, segment.words[i:]),
            )
    return segment, None


def rename_speakers(labels: Sequence[str]) -> list[str]:
    """Rename labels to ``s0``, ``s1``, ... in order of first appearance."""
    mapping: dict[str, str] = {}
    for label in labels:
        if label not in mapping:
            mapping[label] = f"s{len(mapping)}"
    return [mapping[label] for label in labels]


_TOUCH_S = 0.05  # a word this close to a turn's edge lies in it


def extend_to_speech(
    spans: Sequence[Span],
    speakers: Sequence[str],
    turns: Sequence[SpeakerTurn],
    regions: Sequence[Span],
    max_s: float,
) -> list[Span]:
    """Segment spans (first word to last, in time order) moved out to the speech they
    belong to: each start to the start of its speaker's turn holding it (without
    ``turns``: the speech region's), each end to that turn's end, by at most ``max_s``,
    and never into the previous or next segment. Word timestamps clip the edges of
    speech (a soft onset, a trailing syllable), which the diarizer's turns and the
    VAD's regions keep.
    """
    if max_s <= 0 or not spans:
        return list(spans)
    by_speaker: dict[str, list[Span]] = {}
    if turns:
        for t in turns:
            by_speaker.setdefault(t.speaker, []).append(Span(t.start, t.end))
    else:
        by_speaker[""] = list(regions)
    starts: dict[str, list[float]] = {}
    for key, pool in by_speaker.items():
        pool.sort(key=lambda r: r.start)
        starts[key] = [r.start for r in pool]

    def holding(t: float, speaker: str) -> list[Span]:
        key = speaker if turns else ""
        pool = by_speaker.get(key, [])
        i = bisect.bisect_right(starts.get(key, []), t + _TOUCH_S)
        # a speaker's turns (and the VAD's regions) barely overlap: the few before t do
        return [r for r in pool[max(0, i - 8) : i] if r.end >= t - _TOUCH_S]

    out: list[Span] = []
    for i, (span, speaker) in enumerate(zip(spans, speakers, strict=True)):
        floor = out[-1].end if out else 0.0
        ceiling = spans[i + 1].start if i + 1 < len(spans) else float("inf")
        start, end = span.start, span.end
        before = holding(span.start, speaker)
        if before:
            start = max(min(r.start for r in before), span.start - max_s, floor)
        after = holding(span.end, speaker)
        if after:
            end = min(max(r.end for r in after), span.end + max_s, ceiling)
        out.append(Span(min(start, span.start), max(end, span.end)))
    return out
