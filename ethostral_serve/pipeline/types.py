"""Plain data passed between pipeline stages. Times are seconds on the original timeline."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Span:
    """A stretch of time ``[start, end)`` in seconds."""

    start: float
    end: float

    @property
    def duration(self) -> float:
        """Length in seconds (never negative)."""
        return max(0.0, self.end - self.start)

    def overlap(self, other: Span) -> float:
        """Seconds shared with ``other``."""
        return max(0.0, min(self.end, other.end) - max(self.start, other.start))


@dataclass(frozen=True)
class SpeakerTurn:
    """One speaker talking over ``[start, end)``."""

    start: float
    end: float
    speaker: str


@dataclass(frozen=True)
class WordTiming:
    """A recognised word on the original timeline."""

    text: str
    start: float
    end: float
    probability: float = 1.0


@dataclass(frozen=True)
class EmotionResult:
    """A segment's emotion: class posterior plus derived dimensions."""

    label: str
    confidence: float
    valence: float
    arousal: float
    dominance: float
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class TimedEmotion:
    """An emotion the speech model wrote inline (a tag) at ``time`` (seconds); it holds
    until the next one or ``until``, the end of the text it was written in."""

    time: float
    emotion: EmotionResult
    until: float


@dataclass
class Transcript:
    """What a speech model heard in a whole recording.

    ``state`` is the model's own data kept for the emotion pass (e.g. encoder states);
    ``emotions`` are the emotions the model wrote inline, on the original timeline.
    """

    language: str
    language_probability: float
    words: list[WordTiming]
    state: Any = None
    emotions: list[TimedEmotion] = field(default_factory=list)


@dataclass(frozen=True)
class Chunk:
    """Speech regions read as one ASR window: the regions' audio is concatenated.

    ``offsets[i]`` is where region ``i`` starts inside the concatenated window.
    """

    regions: tuple[Span, ...]
    offsets: tuple[float, ...]

    @property
    def duration(self) -> float:
        """Length of the concatenated window in seconds."""
        return sum(r.duration for r in self.regions)

    def to_original(self, t: float) -> float:
        """Map a time inside the window to the original timeline."""
        if not self.regions:
            return t
        index = 0
        for i, off in enumerate(self.offsets):
            if off <= t:
                index = i
        region = self.regions[index]
        return min(region.end, region.start + max(0.0, t - self.offsets[index]))

    def span_to_original(self, start: float, end: float) -> tuple[float, float]:
        """Map a span inside the window (a word) to the original timeline, inside one region.

        A span that crosses from one region into the next belongs to the region holding
        most of it (the earlier on a tie) and is clipped to it: mapped edge by edge, it
        would stretch over the silence the window left out between the regions.
        """
        if not self.regions:
            return start, max(start, end)
        best, share = 0, -np.inf
        for i, (region, offset) in enumerate(zip(self.regions, self.offsets, strict=True)):
            overlap = min(end, offset + region.duration) - max(start, offset)
            if overlap > share + 1e-9:  # a tie (to rounding) stays with the earlier
                best, share = i, overlap
        if share <= 0:  # a point, or past the window's end: mapped edge by edge
            t = self.to_original(start)
            return t, max(t, self.to_original(end))
        region, offset = self.regions[best], self.offsets[best]
        lo = region.start + min(max(start - offset, 0.0), region.duration)
        hi = region.start + min(max(end - offset, 0.0), region.duration)
        return lo, max(lo, hi)

    def samples(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """The window's audio: the regions' samples one after the other."""
        parts = [
            audio[round(r.start * sample_rate) : round(r.end * sample_rate)] for r in self.regions
        ]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)


@dataclass
class WindowResult:
    """One ASR window recognised, times inside the window: words, encoder frames (for a
    model whose emotion reads them; else none) and emotions the model wrote inline."""

    words: list[WordTiming]
    language: str | None
    language_probability: float
    frames: np.ndarray  # (n, d) float16, frame j centred on (j + 0.5) * 20 ms
    emotions: list[TimedEmotion] = field(default_factory=list)
    # The languages the model heard, most probable first, when it identified the
    # window's language (empty when it was given one), for a file's LanguageVote.
    language_ranking: tuple[tuple[str, float], ...] = ()

    @classmethod
    def empty(cls, language: str | None) -> WindowResult:
        """A window too short to recognise."""
        return cls([], language, 1.0, np.zeros((0, 0), np.float16))


@dataclass
class EmotionInput:
    """What the emotion model reads for one segment: encoder frames, or else its audio."""

    frames: np.ndarray | None = None
    audio: np.ndarray | None = None


@dataclass(frozen=True)
class UtteranceResult:
    """A finished live utterance: words (seconds inside it), language and emotion."""

    words: list[WordTiming]
    language: str
    emotion: EmotionResult | None
    language_ranking: tuple[tuple[str, float], ...] = ()  # when the language was identified

    @property
    def text(self) -> str:
        """The words joined as Whisper spells them."""
        return "".join(w.text for w in self.words).strip()


MAX_SPEAKERS = 50  # the largest speaker count a request may give


@dataclass(frozen=True)
class SpeakerCount:
    """How many speakers a request says there are: exactly ``num``, or between ``min``
    and ``max`` (each optional). None everywhere: estimate freely."""

    num: int | None = None
    min: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        for name in ("num", "min", "max"):
            value = getattr(self, name)
            if value is not None and not 1 <= value <= MAX_SPEAKERS:
                raise ValueError(
                    f"{name}_speakers must be between 1 and {MAX_SPEAKERS}, got {value}"
                )
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(
                f"min_speakers ({self.min}) must not be larger than max_speakers ({self.max})"
            )
        if self.num is not None and (
            (self.min is not None and self.min > self.num)
            or (self.max is not None and self.max < self.num)
        ):
            raise ValueError(
                f"num_speakers ({self.num}) lies outside min_speakers..max_speakers "
                f"({self.min}..{self.max})"
            )

    @property
    def given(self) -> bool:
        """Whether any bound was given."""
        return self.num is not None or self.min is not None or self.max is not None

    @property
    def upper(self) -> int | None:
        """The most speakers allowed (None: no bound)."""
        return self.num if self.num is not None else self.max
