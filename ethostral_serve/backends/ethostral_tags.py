"""Inline bracket tags in Ethostral transcripts: strip them from the text, read the
emotion they carry.

The Ethostral fine-tune writes tags into its transcript, e.g. ``[nervous] So... [laughs]
I think``. Emotion tags name how the speaker sounds; event tags (laughs, sighs, …) name
non-speech sounds. Both are removed from the text. Each tag maps to one of the SPEC's
emotion labels through :data:`TAG_LABELS` (events only where they say something about
the emotion: a laugh is Happy, a sigh or sob Sad; a cough says nothing). Valence,
arousal and dominance come from the label's published norms
(:data:`~ethostral_serve.backends.emotion.EMOTION_VAD_NORMS`).

Pure string handling; no model, no torch.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ethostral_serve.backends.emotion import EMOTION_VAD_NORMS
from ethostral_serve.pipeline.types import EmotionResult

# tag (lower case, letters and single spaces) → SPEC emotion label; None: no emotion
TAG_LABELS: dict[str, str | None] = {
    # emotion tags
    "neutral": "Neutral",
    "calm": "Calm",
    "relaxed": "Calm",
    "content": "Calm",
    "happy": "Happy",
    "joyful": "Happy",
    "cheerful": "Happy",
    "excited": "Happy",
    "amused": "Happy",
    "sad": "Sad",
    "upset": "Sad",
    "disappointed": "Sad",
    "angry": "Angry",
    "annoyed": "Angry",
    "frustrated": "Angry",
    "furious": "Angry",
    "nervous": "Fearful",
    "anxious": "Fearful",
    "worried": "Fearful",
    "scared": "Fearful",
    "afraid": "Fearful",
    "fearful": "Fearful",
    "disgusted": "Disgust",
    "disgust": "Disgust",
    "surprised": "Surprised",
    "shocked": "Surprised",
    "amazed": "Surprised",
    # events that carry an emotion
    "laughs": "Happy",
    "laughing": "Happy",
    "laughter": "Happy",
    "chuckles": "Happy",
    "giggles": "Happy",
    "sighs": "Sad",
    "sobs": "Sad",
    "crying": "Sad",
    "cries": "Sad",
    "gasps": "Surprised",
    "screams": "Fearful",
    # events that carry none
    "coughs": None,
    "clears throat": None,
    "breathes": None,
    "inhales": None,
    "exhales": None,
    "sniffs": None,
    "pause": None,
    "silence": None,
    "inaudible": None,
    "noise": None,
    "music": None,
}

MAX_TAG_CHARS = 40  # longer bracketed text is speech in brackets, not a tag


@dataclass(frozen=True)
class Tag:
    """One tag: its normalised name, where it sat in the raw text, and its label.

    ``label`` is None for events without emotion and for unknown tags; ``known`` tells
    the two apart.
    """

    name: str
    start: int  # character offsets of the whole tag, brackets included, in the raw text
    end: int
    label: str | None
    known: bool


@dataclass(frozen=True)
class TaggedText:
    """A transcript with its tags removed, and the tags in order.

    ``offsets[k]`` is where ``text[k]`` came from in the raw text (a space put in where
    a tag was removed points at the tag).
    """

    text: str
    tags: tuple[Tag, ...]
    offsets: tuple[int, ...] = ()

    def position(self, raw_offset: int) -> int:
        """How many characters of ``text`` came from before ``raw_offset`` in the raw text."""
        return sum(1 for o in self.offsets if o < raw_offset)

    @property
    def emotion_tags(self) -> tuple[Tag, ...]:
        """The tags that name an emotion label, in order."""
        return tuple(t for t in self.tags if t.label is not None)


_TAG_NAME = re.compile(r"[^a-z ]+")


def normalise_tag(inner: str) -> str:
    """``' Nervous: '`` → ``'nervous'``: lower case, letters and single spaces only."""
    return " ".join(_TAG_NAME.sub(" ", inner.lower()).split())


def parse_tags(raw: str) -> TaggedText:
    """Remove inline ``[tag]`` markers from ``raw`` and collect them.

    - Several tags, tags mid-word (``hel[laughs]lo`` → ``hello``), nested or doubled
      brackets (``[[happy]]``) and any case or punctuation inside (``[ Happy! ]``) work.
    - An unclosed ``[`` is a tag if the word after it is a known tag (``[nervous So``
      → tag ``nervous``, text ``So``); otherwise the ``[`` is dropped and the words kept.
    - A stray ``]`` is dropped. Bracketed text longer than :data:`MAX_TAG_CHARS` is
      kept as speech, without its brackets.
    - Unknown tags are removed too (``known=False``, no label).
    - Spaces are tidied: runs collapse to one, none before ``, . ! ? ; :``.
    """
    out: list[tuple[str, int]] = []  # kept characters and where they came from
    tags: list[Tag] = []
    i, n = 0, len(raw)
    while i < n:
        c = raw[i]
        if c == "]":
            i += 1
            continue
        if c != "[":
            out.append((c, i))
            i += 1
            continue
        start = i
        while i < n and raw[i] == "[":  # [[happy]] reads as [happy]
            i += 1
        close = raw.find("]", i)
        reopen = raw.find("[", i)
        if close != -1 and (reopen == -1 or close < reopen):
            inner = raw[i:close]
            end = close + 1
            while end < n and raw[end] == "]":
                end += 1
            if len(inner) > MAX_TAG_CHARS:
                out += [(ch, i + k) for k, ch in enumerate(inner)]
            else:
                tags.append(_tag(normalise_tag(inner), start, end))
                if _joins_word(out, raw, end):
                    pass  # hel[laughs]lo → hello
                elif out and not out[-1][0].isspace():
                    out.append((" ", start))
            i = end
            continue
        # unclosed: a known tag name right after the bracket is the tag
        match = re.match(r"\s*([A-Za-z]+(?: [A-Za-z]+)?)", raw[i:])
        name = ""
        if match:
            for candidate in (match.group(1), match.group(1).split(" ")[0]):
                if normalise_tag(candidate) in TAG_LABELS:
                    name = normalise_tag(candidate)
                    end = i + match.start(1) + len(candidate)
                    break
        if name:
            tags.append(_tag(name, start, end))
            i = end
        # else: drop the bracket(s), keep what follows
    kept = _tidy(out)
    return TaggedText("".join(c for c, _ in kept), tuple(tags), tuple(o for _, o in kept))


def _tag(name: str, start: int, end: int) -> Tag:
    known = name in TAG_LABELS
    return Tag(name, start, end, TAG_LABELS.get(name) if known else None, known)


def _joins_word(out: list[tuple[str, int]], raw: str, end: int) -> bool:
    """A tag between two letters sat inside a word."""
    return bool(out) and out[-1][0].isalpha() and end < len(raw) and raw[end].isalpha()


def _tidy(chars: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """Runs of spaces as one, none at the ends or before ``, . ! ? ; :``; offsets kept."""
    kept: list[tuple[str, int]] = []
    for c, o in chars:
        if c.isspace():
            if kept and kept[-1][0] != " ":
                kept.append((" ", o))
        elif c in ",.!?;:" and kept and kept[-1][0] == " ":
            kept[-1] = (c, o)
        else:
            kept.append((c, o))
    return kept[:-1] if kept and kept[-1][0] == " " else kept


def tag_emotion(parsed: TaggedText, probabilities: Sequence[float]) -> EmotionResult | None:
    """A segment's emotion from its emotion tags, or None when it has none.

    ``probabilities`` holds, per tag of ``parsed.tags`` (all of them, in order), the
    model's own probability of having written that tag. The most probable emotion tag
    wins (the first on ties); its probability is the confidence, and valence, arousal
    and dominance are its label's norms.
    """
    if len(probabilities) != len(parsed.tags):
        raise ValueError("one probability per tag")
    best: tuple[float, str] | None = None
    for tag, p in zip(parsed.tags, probabilities, strict=True):
        if tag.label is not None and (best is None or p > best[0]):
            best = (float(p), tag.label)
    if best is None:
        return None
    confidence, label = best
    return label_emotion(label, confidence)


def label_emotion(label: str, confidence: float) -> EmotionResult:
    """The emotion of a tag's ``label``: valence, arousal and dominance from its norms."""
    valence, arousal, dominance = EMOTION_VAD_NORMS[label]
    return EmotionResult(label, confidence, valence, arousal, dominance, {label: confidence})
