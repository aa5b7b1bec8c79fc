"""Overlap-aware diarization from local segmentation scores and speaker embeddings.

Pure numpy/scipy, following the recipe of pyannote's speaker-diarization pipeline:

1. A segmentation model scores overlapping windows (e.g. 5 s every 1 s): for every
   frame of a window, the probability that each of up to K *local* speakers talks.
   :func:`binarize` turns the scores into activity with hysteresis.
2. Each active (window, local speaker) becomes a *unit*. Its embedding
   (:func:`unit_embeddings`) is the mean of short sub-window speaker embeddings that the
   local speaker holds on its own (overlapped speech is left out), weighted by how much
   of each sub-window is theirs.
3. :func:`cluster_units` groups units into global speakers by average-linkage
   agglomerative clustering on cosine distance, with a cannot-link constraint: two local
   speakers of one window are different people. Merging stops at ``threshold``, or where
   the number of clusters of at least ``min_cluster_units`` units fits the requested
   speaker count; smaller clusters are outliers whose units join the nearest speaker.
4. :func:`assign_units` maps every local speaker of every window to a global speaker
   (one-to-one inside a window, Hungarian assignment on cosine similarity).
5. :func:`reconstruct` averages each global speaker's scores over the windows and, frame
   by frame, keeps as many speakers as the segmentation says are talking: overlapped
   speech is given to both speakers. Turns of different speakers may overlap.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ethostral_serve.pipeline.types import SpeakerCount, SpeakerTurn


@dataclass(frozen=True)
class FrameGrid:
    """Where the frames of a segmentation window lie, relative to the window's start."""

    step_s: float
    """Time between frame starts."""
    duration_s: float
    """Receptive field of one frame."""
    frames: int
    """Frames per window."""
    window_s: float
    """Window length."""

    def centres(self, window_start: float) -> np.ndarray:
        """Centre times (s) of the frames of a window starting at ``window_start``."""
        return window_start + np.arange(self.frames) * self.step_s + self.duration_s / 2


@dataclass(frozen=True)
class OverlapDiarizationOptions:
    """Knobs of :func:`diarize_segmentation` (defaults tuned in benchmarks/diarization.py)."""

    onset: float = 0.5
    """Score above which a local speaker starts talking."""
    offset: float = 0.5
    """Score below which a local speaker stops talking."""
    min_exclusive: float = 0.6
    """A sub-window counts for a unit when at least this share of it is the unit's
    speaker talking alone."""
    threshold: float = 0.25
    """Average-linkage cosine distance above which clusters are not merged."""
    min_cluster_units: int = 2
    """Smaller clusters join the nearest larger one (unless a count forces them)."""
    same_voice: float = 0.15
    """Two local speakers of one window closer than this (cosine distance) may still be
    one voice that the segmentation split in two; they are not kept apart."""
    merge_distance: float = 0.0
    """After the cut, speakers whose centroids (the mean of all their units) are closer
    than this cosine distance are merged, closest first; 0: never. One speaker's units
    scatter (reverberation, what is said), so average linkage can split a voice whose
    centroids still agree."""
    max_units: int = 1000
    """Above this many units, clustering runs on a regular subsample (bounds time and
    memory); the rest are assigned to the nearest centroid."""


def binarize(scores: np.ndarray, onset: float, offset: float) -> np.ndarray:
    """Hysteresis thresholding of ``(windows, frames, speakers)`` scores along frames.

    A speaker turns on where the score rises above ``onset`` and stays on until it
    falls below ``offset`` (``offset <= onset``).
    """
    s = np.asarray(scores, dtype=np.float32)
    on = s > onset
    if offset >= onset:
        return on
    off = s < offset
    # State at each frame = the last decisive event (on: 1, off: 0); frames with neither
    # keep the previous state. Forward-fill the index of the last event along frames.
    event = on | off
    n_frames = s.shape[1]
    idx = np.where(event, np.arange(n_frames)[None, :, None], -1)
    last = np.maximum.accumulate(idx, axis=1)
    state = np.take_along_axis(on, np.maximum(last, 0), axis=1)
    return state & (last >= 0)


def unit_embeddings(
    window_starts: np.ndarray,
    activity: np.ndarray,
    grid: FrameGrid,
    sub_embeddings: np.ndarray,
    sub_windows: np.ndarray,
    min_exclusive: float,
) -> np.ndarray:
    """Embedding ``(windows, speakers, d)`` of each (window, local speaker); NaN where
    the speaker holds no sub-window on its own enough.

    ``sub_embeddings`` ``(m, d)`` are unit-length embeddings of short sub-windows
    ``sub_windows`` ``(m, 2)`` (start, end seconds). A sub-window counts for a unit when
    it lies inside the window and at least ``min_exclusive`` of its frames are the
    unit's speaker talking alone; counted sub-windows are averaged, weighted by that
    share.
    """
    n_win, _, n_spk = activity.shape
    dim = sub_embeddings.shape[1] if sub_embeddings.ndim == 2 else 0
    out = np.full((n_win, n_spk, dim), np.nan, dtype=np.float64)
    if len(sub_windows) == 0 or n_win == 0:
        return out
    exclusive = activity & (activity.sum(axis=2, keepdims=True) == 1)
    # cumulative exclusive frames per speaker, to get each sub-window's share in O(1)
    cum = np.concatenate(
        [np.zeros((n_win, 1, n_spk)), np.cumsum(exclusive, axis=1, dtype=np.float64)], axis=1
    )
    sub = np.asarray(sub_windows, dtype=np.float64)
    emb = np.asarray(sub_embeddings, dtype=np.float64)
    for w, t0 in enumerate(window_starts):
        inside = np.flatnonzero((sub[:, 0] >= t0 - 1e-6) & (sub[:, 1] <= t0 + grid.window_s + 1e-6))
        if len(inside) == 0:
            continue
        centres = grid.centres(float(t0))
        lo = np.searchsorted(centres, sub[inside, 0], side="left")
        hi = np.searchsorted(centres, sub[inside, 1], side="left")
        count = np.maximum(hi - lo, 1)
        share = (cum[w, hi] - cum[w, lo]) / count[:, None]  # (inside, speakers)
        share[hi <= lo] = 0.0
        for k in range(n_spk):
            keep = share[:, k] >= min_exclusive
            if not keep.any():
                continue
            v = (emb[inside[keep]] * share[keep, k, None]).sum(axis=0)
            norm = float(np.linalg.norm(v))
            if norm > 0:
                out[w, k] = v / norm
    return out


def _bounds(count: SpeakerCount | None, n: int) -> tuple[int, int | None]:
    """(fewest, most) clusters allowed for ``n`` units; None: no upper bound."""
    if count is None:
        return 1, None
    if count.num is not None:
        return min(count.num, n), min(count.num, n)
    lo = min(count.min or 1, n)
    hi = None if count.max is None else max(lo, min(count.max, n))
    return lo, hi


def constrained_average_linkage(
    x: np.ndarray,
    groups: np.ndarray,
    max_distance: float = np.inf,
    same_voice: float = 0.0,
) -> list[tuple[int, int, float]]:
    """The merges of average-linkage clustering of unit vectors ``x`` on cosine distance.

    Units with the same ``groups`` value (local speakers of one window) never share a
    cluster, unless they are closer than ``same_voice`` (the segmentation then split one
    voice into two local speakers); merging ends when only such pairs are left, or when
    the closest pair is farther than ``max_distance``. Each merge is ``(kept, absorbed,
    distance)`` in cluster ids that start as the unit indices; replay a prefix with
    :func:`labels_after`.
    """
    n = len(x)
    merges: list[tuple[int, int, float]] = []
    if n < 2:
        return merges
    v = np.asarray(x, dtype=np.float64)
    sums = v @ v.T
    size = np.ones(n)
    g = np.asarray(groups)
    cannot = (g[:, None] == g[None, :]) & (1.0 - sums >= same_voice)
    np.fill_diagonal(cannot, True)
    alive = np.ones(n, dtype=bool)
    avg = sums.copy()  # mean pairwise similarity between clusters
    avg[cannot] = -np.inf  # includes the diagonal
    for _ in range(n - 1):
        flat = int(np.argmax(avg))
        i, j = divmod(flat, n)
        best = float(avg[i, j])
        if not np.isfinite(best) or 1.0 - best > max_distance:
            break
        i, j = min(i, j), max(i, j)
        merges.append((i, j, 1.0 - best))
        sums[i] += sums[j]
        sums[:, i] = sums[i]
        size[i] += size[j]
        cannot[i] |= cannot[j]
        cannot[:, i] = cannot[i]
        alive[j] = False
        row = sums[i] / (size[i] * size)
        row[cannot[i] | ~alive] = -np.inf
        avg[i] = row
        avg[:, i] = row
        avg[j] = -np.inf
        avg[:, j] = -np.inf
    return merges


def labels_after(n: int, merges: Sequence[tuple[int, int, float]]) -> np.ndarray:
    """Cluster of each of ``n`` units after the given merges (labels 0..k-1 in order
    of first occurrence)."""
    parent = np.arange(n)
    for kept, absorbed, _ in merges:
        parent[parent == absorbed] = kept
    _, first, inverse = np.unique(parent, return_index=True, return_inverse=True)
    return np.argsort(np.argsort(first))[inverse].astype(np.int64)


def choose_cut(
    n: int,
    merges: Sequence[tuple[int, int, float]],
    threshold: float,
    min_size: int,
    lo: int,
    hi: int | None,
) -> int:
    """How many of ``merges`` to apply: those closer than ``threshold``, unless that
    leaves a number of *large* clusters (at least ``min_size`` units; smaller ones are
    outliers that join a large one later) outside ``[lo, hi]``; then the cut whose
    large-cluster count fits, nearest to the threshold's cut."""
    size = np.ones(n, dtype=np.int64)
    large = [int(min_size <= 1) * n]
    for kept, absorbed, _ in merges:
        before = int(size[kept] >= min_size) + int(size[absorbed] >= min_size)
        size[kept] += size[absorbed]
        size[absorbed] = 0
        large.append(large[-1] - before + int(size[kept] >= min_size))
    natural = next((i for i, (_, _, d) in enumerate(merges) if d > threshold), len(merges))

    def fits(step: int) -> bool:
        count = max(large[step], 1)
        return count >= lo and (hi is None or count <= hi)

    if fits(natural):
        return natural
    candidates = [step for step in range(len(large)) if fits(step)]
    if not candidates:  # e.g. fewer units than speakers asked for
        return natural if hi is None else len(merges)
    return min(candidates, key=lambda step: abs(step - natural))


def cluster_units(
    embeddings: np.ndarray,
    options: OverlapDiarizationOptions,
    count: SpeakerCount | None = None,
) -> np.ndarray:
    """Unit-length centroids ``(k, d)`` of the global speakers of ``(windows, speakers,
    d)`` unit embeddings (NaN rows are skipped); ``(0, d)`` when no unit is valid."""
    n_win, n_spk, dim = embeddings.shape
    valid = ~np.isnan(embeddings[..., 0]) if dim else np.zeros((n_win, n_spk), bool)
    x = embeddings[valid]
    if len(x) == 0:
        return np.zeros((0, dim))
    groups = np.broadcast_to(np.arange(n_win)[:, None], (n_win, n_spk))[valid]
    if len(x) > options.max_units:
        pick = np.linspace(0, len(x) - 1, options.max_units).round().astype(np.int64)
        x, groups = x[pick], groups[pick]
    lo, hi = _bounds(count, len(x))
    min_size = min(options.min_cluster_units, max(1, len(x) // max(lo, 1)))
    merges = constrained_average_linkage(
        x,
        groups,
        options.threshold if count is None or not count.given else np.inf,
        options.same_voice,
    )
    step = choose_cut(len(x), merges, options.threshold, min_size, lo, hi)
    labels = labels_after(len(x), merges[:step])
    sizes = np.bincount(labels)
    keep = [c for c in range(len(sizes)) if sizes[c] >= min_size]
    if not keep:
        keep = [int(np.argmax(sizes))]
    members = [np.flatnonzero(labels == c) for c in keep]
    members = merge_close_centroids(x, members, options.merge_distance, lo)
    centroids = np.stack([x[m].mean(axis=0) for m in members])
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def merge_close_centroids(
    x: np.ndarray, members: Sequence[np.ndarray], max_distance: float, fewest: int = 1
) -> list[np.ndarray]:
    """Clusters (index arrays into ``x``) after merging, closest first, every pair whose
    centroids are closer than ``max_distance`` (cosine), while more than ``fewest``
    remain."""
    out = [np.asarray(m) for m in members]
    while len(out) > max(fewest, 1) and max_distance > 0:
        c = np.stack([x[m].mean(axis=0) for m in out])
        c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
        distance = 1.0 - c @ c.T
        np.fill_diagonal(distance, np.inf)
        i, j = divmod(int(np.argmin(distance)), len(out))
        if distance[i, j] >= max_distance:
            break
        i, j = min(i, j), max(i, j)
        out[i] = np.concatenate([out[i], out[j]])
        del out[j]
    return out


def assign_units(embeddings: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Global speaker ``(windows, speakers)`` of each unit (-1: none); the local speakers
    of one window get different global speakers while there are enough of them."""
    from scipy.optimize import linear_sum_assignment

    n_win, n_spk, _ = embeddings.shape
    out = np.full((n_win, n_spk), -1, dtype=np.int64)
    if len(centroids) == 0:
        return out
    for w in range(n_win):
        ks = np.flatnonzero(~np.isnan(embeddings[w, :, 0]))
        if len(ks) == 0:
            continue
        sim = embeddings[w, ks] @ centroids.T
        if len(ks) <= len(centroids):
            rows, cols = linear_sum_assignment(-sim)
            out[w, ks[rows]] = cols
        else:
            out[w, ks] = np.argmax(sim, axis=1)
    return out


def reconstruct(
    window_starts: np.ndarray,
    scores: np.ndarray,
    activity: np.ndarray,
    assignment: np.ndarray,
    n_speakers: int,
    grid: FrameGrid,
    duration: float,
) -> list[SpeakerTurn]:
    """Global speaker turns from per-window scores, unit assignment and activity.

    Scores of each global speaker are averaged over the windows covering a frame; the
    number of speakers talking at a frame is the rounded mean of active local speakers
    over those windows; that many speakers with the highest scores are marked active.
    Turns of different speakers overlap where two speakers talk at once.
    """
    if n_speakers == 0 or len(window_starts) == 0:
        return []
    step = grid.step_s
    n_total = int(np.ceil(duration / step)) + grid.frames + 2
    agg = np.zeros((n_total, n_speakers))
    covered = np.zeros(n_total)
    talking = np.zeros(n_total)
    n_spk = scores.shape[2]
    for w, t0 in enumerate(window_starts):
        i0 = round(float(t0) / step)
        local = np.zeros((grid.frames, n_speakers))
        for k in range(n_spk):
            g = assignment[w, k]
            if g >= 0:
                local[:, g] = np.maximum(local[:, g], scores[w, :, k])
        agg[i0 : i0 + grid.frames] += local
        covered[i0 : i0 + grid.frames] += 1.0
        talking[i0 : i0 + grid.frames] += activity[w].sum(axis=1)
    covered = np.maximum(covered, 1.0)
    agg /= covered[:, None]
    count = np.minimum(np.rint(talking / covered).astype(np.int64), n_speakers)
    ranked = np.argsort(-agg, axis=1, kind="stable")
    active = np.zeros_like(agg, dtype=bool)
    for c in range(1, n_speakers + 1):
        rows = np.flatnonzero(count >= c)
        active[rows, ranked[rows, c - 1]] = True
    raw: list[tuple[float, float, int]] = []
    half = grid.duration_s / 2
    for g in range(n_speakers):
        edges = np.diff(np.concatenate([[0], active[:, g].astype(np.int8), [0]]))
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True):
            start = max(0.0, a * step + half)
            end = min(duration, b * step + half)
            if end > start:
                raw.append((start, end, g))
    raw.sort()
    names: dict[int, str] = {}
    return [SpeakerTurn(s, e, names.setdefault(g, f"s{len(names)}")) for s, e, g in raw]


def diarize_segmentation(
    window_starts: np.ndarray,
    scores: np.ndarray,
    grid: FrameGrid,
    sub_embeddings: np.ndarray,
    sub_windows: np.ndarray,
    duration: float,
    options: OverlapDiarizationOptions | None = None,
    count: SpeakerCount | None = None,
) -> list[SpeakerTurn]:
    """Speaker turns (overlapping where speakers overlap) from segmentation ``scores``
    ``(windows, frames, local speakers)`` of windows starting at ``window_starts`` and
    sub-window speaker embeddings; ``count`` bounds the number of speakers."""
    opts = options or OverlapDiarizationOptions()
    activity = binarize(scores, opts.onset, opts.offset)
    units = unit_embeddings(
        np.asarray(window_starts, dtype=np.float64),
        activity,
        grid,
        sub_embeddings,
        sub_windows,
        opts.min_exclusive,
    )
    centroids = cluster_units(units, opts, count)
    assignment = assign_units(units, centroids)
    return reconstruct(
        np.asarray(window_starts, dtype=np.float64),
        np.asarray(scores, dtype=np.float64),
        activity,
        assignment,
        len(centroids),
        grid,
        duration,
    )


def speech_regions(
    window_starts: Sequence[float], activity: np.ndarray, grid: FrameGrid
) -> list[tuple[float, float]]:
    """Where anyone talks according to the segmentation: frames where most covering
    windows have at least one active local speaker; ``(start, end)`` seconds."""
    if len(window_starts) == 0:
        return []
    step = grid.step_s
    n_total = round(float(max(window_starts)) / step) + grid.frames + 2
    votes = np.zeros(n_total)
    covered = np.zeros(n_total)
    for w, t0 in enumerate(window_starts):
        i0 = round(float(t0) / step)
        votes[i0 : i0 + grid.frames] += activity[w].any(axis=1)
        covered[i0 : i0 + grid.frames] += 1.0
    speech = votes / np.maximum(covered, 1.0) >= 0.5
    edges = np.diff(np.concatenate([[0], speech.astype(np.int8), [0]]))
    half = grid.duration_s / 2
    return [
        (a * step + half, b * step + half)
        for a, b in zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True)
    ]
