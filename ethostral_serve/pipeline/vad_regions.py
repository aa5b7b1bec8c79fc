"""Speech regions from Silero's per-frame speech probabilities (numpy only).

The rules are Silero VAD's: a region opens on a frame at or above ``threshold`` and
closes after ``min_silence_ms`` of frames below a lower threshold (hysteresis); short
regions are dropped; a region that grows past ``max_speech_s`` is cut at its longest
pause; finally every region is padded, and neighbours whose pads would overlap share the
gap between them. Positions are in samples at 16 kHz, one probability per 512-sample frame.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import numpy as np

from ethostral_serve.audio import SAMPLE_RATE
from ethostral_serve.pipeline.streaming import VAD_FRAME
from ethostral_serve.pipeline.types import Span
from ethostral_serve.settings import VadSettings

HYSTERESIS = 0.15  # a region ends on frames below ``threshold - HYSTERESIS``
MIN_NEGATIVE_THRESHOLD = 0.01
CUT_PAUSE_MS = 98  # only pauses longer than this are places to cut an over-long region


def negative_threshold(threshold: float) -> float:
    """The probability below which a frame counts as silence inside a region."""
    return max(threshold - HYSTERESIS, MIN_NEGATIVE_THRESHOLD)


def speech_regions_from_probs(
    probs: Sequence[float] | np.ndarray,
    n_samples: int,
    *,
    threshold: float = 0.5,
    min_speech_ms: int = 250,
    min_silence_ms: int = 300,
    speech_pad_ms: int = 200,
    max_speech_s: float = float("inf"),
    fallback_threshold: float | None = None,
) -> list[tuple[int, int]]:
    """Padded, non-overlapping ``(start, end)`` sample ranges of speech.

    ``probs`` holds one speech probability per 512-sample frame of a recording that is
    ``n_samples`` long (its last frame may be partial). When no region reaches
    ``threshold`` anywhere in the recording, the regions at ``fallback_threshold`` (if
    given and lower) are returned instead.
    """
    at = partial(
        _regions_at,
        probs,
        n_samples,
        min_speech_ms=min_speech_ms,
        min_silence_ms=min_silence_ms,
        speech_pad_ms=speech_pad_ms,
        max_speech_s=max_speech_s,
    )
    regions = at(threshold)
    if not regions and fallback_threshold is not None and fallback_threshold < threshold:
        regions = at(fallback_threshold)
    return regions


def speech_spans(
    probs: Sequence[float] | np.ndarray, n_samples: int, settings: VadSettings
) -> list[Span]:
    """Speech regions in seconds from per-frame probabilities, by the VAD settings'
    threshold, silences, padding and longest region (what an upload's VAD gives)."""
    regions = speech_regions_from_probs(
        probs,
        n_samples,
        threshold=settings.threshold,
        min_speech_ms=settings.min_speech_ms,
        min_silence_ms=settings.min_silence_ms,
        speech_pad_ms=settings.speech_pad_ms,
        max_speech_s=settings.max_chunk_s,
        fallback_threshold=settings.fallback_threshold,
    )
    return [Span(start / SAMPLE_RATE, end / SAMPLE_RATE) for start, end in regions]


def _regions_at(
    probs: Sequence[float] | np.ndarray,
    n_samples: int,
    threshold: float,
    *,
    min_speech_ms: int,
    min_silence_ms: int,
    speech_pad_ms: int,
    max_speech_s: float,
) -> list[tuple[int, int]]:
    """:func:`speech_regions_from_probs` at one threshold."""
    pad = SAMPLE_RATE * speech_pad_ms / 1000
    # A region may grow to ``max_speech_s`` once padded and rounded up to a whole frame.
    max_length = SAMPLE_RATE * max_speech_s - VAD_FRAME - 2 * pad
    scores = np.asarray(probs).reshape(-1)
    if not np.issubdtype(scores.dtype, np.floating):
        scores = scores.astype(np.float64)
    # Compared in the probabilities' own precision (float32 from the model), as Silero does.
    loud = (scores >= threshold).tolist()
    quiet = (scores < negative_threshold(threshold)).tolist()
    regions = _unpadded_regions(
        loud,
        quiet,
        n_samples,
        min_speech=SAMPLE_RATE * min_speech_ms / 1000,
        min_silence=SAMPLE_RATE * min_silence_ms / 1000,
        max_length=max_length,
    )
    return _pad(regions, n_samples, pad)


def _unpadded_regions(
    loud: list[bool],
    quiet: list[bool],
    n_samples: int,
    *,
    min_speech: float,
    min_silence: float,
    max_length: float,
) -> list[tuple[int, int]]:
    """Speech regions before padding, by one pass over the frames: ``loud`` frames are
    speech, ``quiet`` ones silence, the rest (between the thresholds) neither."""
    cut_pause = SAMPLE_RATE * CUT_PAUSE_MS / 1000
    regions: list[tuple[int, int]] = []
    start: int | None = None  # where the open region began
    quiet_from: int | None = None  # where the open region's current pause began
    pauses: list[tuple[int, int]] = []  # (start, length) of its finished long pauses

    for frame, is_loud in enumerate(loud):
        at = frame * VAD_FRAME
        if is_loud and quiet_from is not None:  # a pause ends: remember it as a cut point
            if at - quiet_from > cut_pause:
                pauses.append((quiet_from, at - quiet_from))
            quiet_from = None
        if start is None:
            if is_loud:
                start = at
            continue

        if at - start > max_length:
            if not pauses:  # no pause to cut at: close the region here, skip this frame
                regions.append((start, at))
                start, quiet_from, pauses = None, None, []
                continue
            # Cut at the longest pause (the earliest of equals); the rest of the region
            # becomes a new one that begins where that pause ended. A pause going on now
            # is forgotten and counts again from this frame.
            cut, length = max(pauses, key=lambda pause: pause[1])
            regions.append((start, cut))
            start, quiet_from, pauses = cut + length, None, []

        if quiet[frame]:
            if quiet_from is None:
                quiet_from = at
            if at - quiet_from >= min_silence:
                if quiet_from - start > min_speech:
                    regions.append((start, quiet_from))
                start, quiet_from, pauses = None, None, []

    if start is not None and n_samples - start > min_speech:
        regions.append((start, n_samples))
    return regions


def _pad(regions: list[tuple[int, int]], n_samples: int, pad: float) -> list[tuple[int, int]]:
    """Widen each region by ``pad`` on both sides, within the recording; a gap shorter
    than two pads is split between its two neighbours instead."""

    def share(gap: int) -> float:
        return gap // 2 if gap < 2 * pad else pad

    padded = []
    last = len(regions) - 1
    for i, (start, end) in enumerate(regions):
        before = pad if i == 0 else share(start - regions[i - 1][1])
        after = pad if i == last else share(regions[i + 1][0] - end)
        padded.append((int(max(0, start - before)), int(min(n_samples, end + after))))
    return padded
