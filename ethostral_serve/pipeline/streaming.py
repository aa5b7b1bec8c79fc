"""Live streams: endpointing from per-frame speech probabilities, partial/final scheduling,
and speaker ids kept consistent across a stream.

Pure logic over numpy arrays. The edge (a WebSocket handler) feeds each connection's
audio and VAD probabilities into a :class:`StreamTracker` and gets back what is due: a
partial for the utterance being spoken (after every ``partial_every_s`` of new speech)
or a final when the utterance ends (enough silence, the maximum length, or the end of
the stream). It then runs the models and sends the events.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE

VAD_FRAME = 512  # Silero's frame at 16 kHz: 32 ms


@dataclass(frozen=True)
class StreamOptions:
    """How a stream is cut into utterances and how often partials come."""

    threshold: float = 0.5
    end_threshold: float = 0.35
    end_silence_s: float = 0.6
    min_speech_s: float = 0.25
    max_utterance_s: float = 12.0
    partial_every_s: float = 0.3
    pad_s: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 < self.end_threshold <= self.threshold < 1.0:
            raise ValueError("need 0 < end_threshold <= threshold < 1")
        if self.max_utterance_s <= self.min_speech_s:
            raise ValueError("max_utterance_s must exceed min_speech_s")


@dataclass(frozen=True)
class Due:
    """Work the edge must do now for one utterance.

    ``kind`` is ``"partial"`` or ``"final"``; ``start``/``end`` are seconds on the
    stream's timeline; ``audio`` is the utterance so far (16 kHz mono float32).
    """

    kind: str
    utterance: int
    start: float
    end: float
    audio: np.ndarray


@dataclass
class StreamTracker:
    """One stream's audio, endpointing state and partial schedule."""

    options: StreamOptions = field(default_factory=StreamOptions)
    _audio: list[np.ndarray] = field(default_factory=list)
    _base: int = 0  # stream sample index of _audio's first sample
    _frames_seen: int = 0  # VAD frames consumed
    _start: int | None = None  # utterance start (samples), when in speech
    _speech_frames: int = 0
    _silence_frames: int = 0
    _last_partial: int = 0  # speech frames counted at the last partial
    _utterances: int = 0

    @property
    def total_samples(self) -> int:
        """Samples received so far."""
        return self._base + sum(len(a) for a in self._audio)

    @property
    def in_utterance(self) -> bool:
        """Whether an utterance is open."""
        return self._start is not None

    def push(self, samples: np.ndarray, probabilities: np.ndarray) -> list[Due]:
        """Add audio and the VAD probabilities of every whole frame now available.

        ``probabilities`` must hold one value per new complete 512-sample frame:
        ``(total_samples // 512) - frames already given``.
        """
        if samples.size:
            self._audio.append(np.asarray(samples, dtype=np.float32).reshape(-1))
        expected = self.total_samples // VAD_FRAME - self._frames_seen
        if len(probabilities) != expected:
            raise ValueError(f"expected {expected} VAD probabilities, got {len(probabilities)}")
        due: list[Due] = []
        o = self.options
        end_frames = max(1, round(o.end_silence_s * SAMPLE_RATE / VAD_FRAME))
        min_frames = max(1, round(o.min_speech_s * SAMPLE_RATE / VAD_FRAME))
        pad = round(o.pad_s * SAMPLE_RATE)
        for p in probabilities:
            frame_start = self._frames_seen * VAD_FRAME
            self._frames_seen += 1
            frame_end = self._frames_seen * VAD_FRAME
            if self._start is None:
                if p >= o.threshold:
                    self._start = max(self._base, frame_start - pad)
                    self._speech_frames, self._silence_frames, self._last_partial = 1, 0, 0
                continue
            if p >= o.end_threshold:
                self._speech_frames += 1
                self._silence_frames = 0
            else:
                self._silence_frames += 1
            length = frame_end - self._start
            if self._silence_frames >= end_frames:
                end = min(frame_end, frame_end - self._silence_frames * VAD_FRAME + pad)
                due += self._close(end, self._speech_frames >= min_frames)
            elif length >= o.max_utterance_s * SAMPLE_RATE:
                due += self._close(frame_end, True)
                self._start = frame_end  # speech goes on: the next utterance starts here
                self._speech_frames, self._silence_frames, self._last_partial = 1, 0, 0
            elif (
                p >= o.end_threshold
                and self._speech_frames >= min_frames
                and (self._speech_frames - self._last_partial) * VAD_FRAME
                >= o.partial_every_s * SAMPLE_RATE
            ):
                self._last_partial = self._speech_frames
                due.append(self._due("partial", self._start, frame_end))
        self._trim()
        return due

    def finish(self) -> list[Due]:
        """The stream ended: the open utterance (if it holds enough speech) is final."""
        if self._start is None:
            return []
        min_frames = max(1, round(self.options.min_speech_s * SAMPLE_RATE / VAD_FRAME))
        return self._close(self.total_samples, self._speech_frames >= min_frames)

    def _close(self, end: int, keep: bool) -> list[Due]:
        start = self._start
        self._start = None
        if start is None or not keep or end <= start:
            return []
        out = [self._due("final", start, end)]
        self._utterances += 1
        return out

    def _due(self, kind: str, start: int, end: int) -> Due:
        return Due(
            kind, self._utterances, start / SAMPLE_RATE, end / SAMPLE_RATE, self._slice(start, end)
        )

    def _slice(self, start: int, end: int) -> np.ndarray:
        joined = np.concatenate(self._audio) if len(self._audio) > 1 else self._audio[0]
        self._audio = [joined]
        return joined[start - self._base : end - self._base].copy()

    def _trim(self) -> None:
        """Forget audio no open utterance can need (keeps the padding before speech)."""
        keep_from = self._start if self._start is not None else self.total_samples
        keep_from -= round(self.options.pad_s * SAMPLE_RATE) + VAD_FRAME
        if keep_from <= self._base or not self._audio:
            return
        joined = np.concatenate(self._audio)
        drop = min(len(joined), keep_from - self._base)
        self._audio = [joined[drop:]]
        self._base += drop


def take_window(queue: deque[Due], max_samples: int) -> list[Due]:
    """Pop the first queued utterance, and those after it that fit one window with it.

    The first is always taken (even if longer than ``max_samples``); later ones only
    while the audio of all taken stays within ``max_samples``. Order is kept.
    """
    batch = [queue.popleft()]
    total = len(batch[0].audio)
    while queue and total + len(queue[0].audio) <= max_samples:
        total += len(queue[0].audio)
        batch.append(queue.popleft())
    return batch


@dataclass
class OnlineSpeakers:
    """Speaker ids for a stream: each utterance joins the nearest running centroid.

    An utterance whose embedding is farther than ``threshold`` (cosine distance) from
    every centroid starts a new speaker; ids are ``s0``, ``s1``, ... in order of first
    appearance, and never change once given.
    """

    # resemblyzer means over 4 s utterances of the shared LibriSpeech test-other speakers:
    # same speaker p95 0.18 (max 0.22), different speakers p5 0.25 (min 0.20).
    threshold: float = 0.22
    max_speakers: int = 10
    _sums: list[np.ndarray] = field(default_factory=list)

    def assign(self, embedding: np.ndarray | None) -> str:
        """The id of the speaker of an utterance with this embedding (``s0`` if None)."""
        if embedding is None or not np.all(np.isfinite(embedding)) or not embedding.any():
            return "s0"  # nothing to tell speakers apart by
        e = embedding / np.linalg.norm(embedding)
        if self._sums:
            sims = [float((s / np.linalg.norm(s)) @ e) for s in self._sums]
            best = int(np.argmax(sims))
            centroid = self._sums[best] / np.linalg.norm(self._sums[best])
            if 1.0 - float(centroid @ e) <= self.threshold or len(self._sums) >= self.max_speakers:
                self._sums[best] = self._sums[best] + e
                return f"s{best}"
        self._sums.append(e.copy())
        return f"s{len(self._sums) - 1}"
