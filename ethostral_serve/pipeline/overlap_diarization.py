"""Overlap-aware diarization from local segmentation scores and speaker embeddings.

Pure numpy/scipy, following the recipe of pyannote's speaker-diarization pipeline:

1. A segmentation model scores overlapping windows (e.g. 5 s every 1 s): for every
   frame of a window, the probability that each of up to K *local* speakers talks.
   :func:`binarize` turns the scores into activity with hysteresis.
2. Each active (window, local speaker) becomes a *unit*. Its embedding
   (:func:`unit_embeddings`) is the mean of short sub-window speaker embeddings that the
   local speaker holds on its own (overlapped speech is left out), weighted by how much
   of each sub-window is theirs.
3. :func:`change_points` finds where the voice changes from the sub-window embeddings
   alone (the segmentation can keep one local speaker across a change of voice), and
   :func:`unit_points` makes a unit that holds speech on both sides of a change one
   point per side.
4. :func:`cluster_points` groups the points into global speakers by average-linkage
   agglomerative clustering on cosine distance, with a cannot-link constraint: two local
   speakers of one window are different people. Merging stops at ``threshold``; clusters
   of fewer than ``min_cluster_units`` points (or, unless a request needs several
   speakers, ``min_cluster_share`` of them, up to ``min_cluster_most``) are outliers
   whose units join the nearest speaker. Speakers whose centroids are closer than
   ``merge_distance`` are then merged. Where a request asks for more speakers than
   that, the cut is made earlier, where enough large clusters stand; where it allows
   fewer, speakers holding less than ``outlier_share`` of the points are dropped first,
   then the closest are merged.
5. :func:`assign_units` maps every local speaker of every window to a global speaker
   (one-to-one inside a window, Hungarian assignment on cosine similarity).
6. :func:`speaker_activity` averages each global speaker's scores over the windows and,
   frame by frame, keeps as many speakers as the segmentation says are talking:
   overlapped speech is given to both speakers. A speaker left with less than
   ``min_speaker_s`` of speech is dropped and the units are assigned again.
   :func:`turns_from_activity` makes the turns; turns of different speakers may overlap.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
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
    min_cluster_share: float = 0.0
    """Clusters smaller than this share of the points join the nearest larger one too,
    up to ``min_cluster_most`` points, unless a request needs several speakers: the
    fragments of a voice that average linkage leaves grow with the length of the
    recording. 0: only ``min_cluster_units``."""
    min_cluster_most: int = 12
    """The share never asks for more than this many clustered points (pyannote's
    speaker-diarization pipeline needs at least 12 embeddings per cluster). Above
    ``max_units`` the points are a subsample, so each stands for several units."""
    outlier_share: float = 0.1
    """Where a request allows fewer speakers than the threshold's cut finds, a speaker
    holding less than this share of the points (a noise, a stray fragment of a voice)
    is dropped first, its units joining the nearest speaker; only then are the two
    closest speakers merged."""
    same_voice: float = 0.15
    """Two local speakers of one window closer than this (cosine distance) may still be
    one voice that the segmentation split in two; they are not kept apart."""
    merge_distance: float = 0.0
    """After the cut, speakers whose centroids (the mean of all their units) are closer
    than this cosine distance are merged, closest first; 0: never. One speaker's units
    scatter (reverberation, what is said), so average linkage can split a voice whose
    centroids still agree. This holds over a requested count: a count never keeps one
    voice apart."""
    change_distance: float = 0.0
    """A change of voice lies between two runs of ``change_side`` sub-windows (one
    sub-window skipped between them) whose mean embeddings are farther apart than this
    cosine distance, at a local maximum; a unit holding sub-windows on both sides of a
    change is clustered as one point per side. 0: off."""
    change_side: int = 2
    """Sub-windows averaged on each side of a candidate change."""
    change_span_s: float = 8.0
    """A candidate change counts only where its sub-windows lie within this many seconds
    (runs that straddle a long pause are not compared)."""
    min_speaker_s: float = 0.0
    """A speaker given less speech than this (seconds, overlap included) in the rebuilt
    turns is dropped, the one with least first, and its units go to the speakers left,
    while more speakers remain than a request's lower bound; 0: never. Far-field
    reverberation and overlap leave fragments of one voice that cluster on their own."""
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


def _unit_members(
    window_starts: np.ndarray,
    activity: np.ndarray,
    grid: FrameGrid,
    sub_windows: np.ndarray,
    min_exclusive: float,
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """``(window, local speaker, sub-window indices, weights)`` of every unit holding at
    least one sub-window: those inside the window of which at least ``min_exclusive``
    of the frames are the speaker talking alone, weighted by that share."""
    n_win, _, n_spk = activity.shape
    if len(sub_windows) == 0 or n_win == 0:
        return
    exclusive = activity & (activity.sum(axis=2, keepdims=True) == 1)
    # cumulative exclusive frames per speaker, to get each sub-window's share in O(1)
    cum = np.concatenate(
        [np.zeros((n_win, 1, n_spk)), np.cumsum(exclusive, axis=1, dtype=np.float64)], axis=1
    )
    sub = np.asarray(sub_windows, dtype=np.float64)
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
            if keep.any():
                yield w, k, inside[keep], share[keep, k]


def _weighted_direction(vectors: np.ndarray, weights: np.ndarray) -> np.ndarray | None:
    """Unit-length weighted sum of ``vectors`` (None if it vanishes)."""
    v = (vectors * weights[:, None]).sum(axis=0)
    norm = float(np.linalg.norm(v))
    return v / norm if norm > 0 else None


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
    emb = np.asarray(sub_embeddings, dtype=np.float64)
    for w, k, members, weights in _unit_members(
        window_starts, activity, grid, sub_windows, min_exclusive
    ):
        v = _weighted_direction(emb[members], weights)
        if v is not None:
            out[w, k] = v
    return out


def change_points(
    sub_embeddings: np.ndarray,
    sub_windows: np.ndarray,
    distance: float,
    side: int = 2,
    max_span_s: float = 8.0,
) -> np.ndarray:
    """Times (s) where the voice changes, seen by the speaker embeddings alone.

    Sub-windows are taken in time order. Around each sub-window ``i``, the mean of the
    ``side`` sub-windows before it is compared with the mean of the ``side`` after it
    (``i`` itself, which may hold the change, is left out); a change lies where that
    cosine distance is above ``distance`` and is the largest within two sub-windows
    either way, midway between the two runs. Runs spread over more than ``max_span_s``
    seconds are not compared. ``distance`` 0: none.
    """
    sub = np.asarray(sub_windows, dtype=np.float64).reshape(-1, 2)
    n = len(sub)
    if distance <= 0 or n < 2 * side + 1:
        return np.zeros(0)
    order = np.argsort(sub[:, 0], kind="stable")
    emb = np.asarray(sub_embeddings, dtype=np.float64)[order]
    sub = sub[order]
    gap = np.full(n, -np.inf)
    for i in range(side, n - side):
        if sub[i + side, 1] - sub[i - side, 0] > max_span_s:
            continue
        left = emb[i - side : i].sum(axis=0)
        right = emb[i + 1 : i + 1 + side].sum(axis=0)
        norms = float(np.linalg.norm(left) * np.linalg.norm(right))
        if norms > 0:
            gap[i] = 1.0 - float(left @ right) / norms
    peaks = [
        i for i in range(n) if gap[i] > distance and gap[i] == gap[max(0, i - 2) : i + 3].max()
    ]
    return np.array([0.5 * (sub[i - 1, 1] + sub[i + 1, 0]) for i in peaks])


def unit_points(
    window_starts: np.ndarray,
    activity: np.ndarray,
    grid: FrameGrid,
    sub_embeddings: np.ndarray,
    sub_windows: np.ndarray,
    min_exclusive: float,
    changes: np.ndarray | Sequence[float] = (),
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The points to cluster: ``(points (n, d), window (n,), unit (n,))``.

    Without ``changes`` these are the valid rows of :func:`unit_embeddings`, in the
    same order (window by window, local speaker by local speaker), and ``unit`` is
    ``window * speakers + speaker``. A unit whose sub-windows lie on both sides of a
    change time becomes one point per side, built from the sub-windows wholly on that
    side (a sub-window reaching more than 0.25 s past the change on both sides is left
    out); such points share their unit id.
    """
    n_spk = activity.shape[2]
    emb = np.asarray(sub_embeddings, dtype=np.float64)
    dim = emb.shape[1] if emb.ndim == 2 else 0
    cuts = np.sort(np.asarray(changes, dtype=np.float64).reshape(-1))
    sub = np.asarray(sub_windows, dtype=np.float64).reshape(-1, 2)
    points: list[np.ndarray] = []
    windows: list[int] = []
    units: list[int] = []
    for w, k, members, weights in _unit_members(
        window_starts, activity, grid, sub_windows, min_exclusive
    ):
        start, end = sub[members, 0], sub[members, 1]
        inside = cuts[(cuts > start.min()) & (cuts < end.max())]
        side = np.searchsorted(inside, 0.5 * (start + end))
        whole = np.ones(len(members), dtype=bool)
        for c in inside:
            whole &= ~((start < c - 0.25) & (end > c + 0.25))
        for s in np.unique(side[whole]):  # one side (0) when no change falls inside
            pick = whole & (side == s)
            v = _weighted_direction(emb[members[pick]], weights[pick])
            if v is not None:
                points.append(v)
                windows.append(w)
                units.append(w * n_spk + k)
    if not points:
        return np.zeros((0, dim)), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    return np.stack(points), np.array(windows), np.array(units)


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
    units: np.ndarray | None = None,
) -> list[tuple[int, int, float]]:
    """The merges of average-linkage clustering of unit vectors ``x`` on cosine distance.

    Points with the same ``groups`` value (local speakers of one window) never share a
    cluster, unless they are closer than ``same_voice`` (the segmentation then split one
    voice into two local speakers) or come from the same unit (``units``: the sides of
    one local speaker around a change of voice, which the embeddings alone decide; by
    default every point is its own unit); merging ends when only such pairs are left, or when
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
    u = np.arange(n) if units is None else np.asarray(units)
    cannot = (g[:, None] == g[None, :]) & (u[:, None] != u[None, :]) & (1.0 - sums >= same_voice)
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


def natural_cut(merges: Sequence[tuple[int, int, float]], threshold: float) -> int:
    """How many of ``merges`` come before the first one farther apart than
    ``threshold``: the cut the threshold alone makes."""
    return next((i for i, (_, _, d) in enumerate(merges) if d > threshold), len(merges))


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
    natural = natural_cut(merges, threshold)

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
    if dim == 0:
        return np.zeros((0, 0))
    valid = ~np.isnan(embeddings[..., 0])
    windows = np.broadcast_to(np.arange(n_win)[:, None], (n_win, n_spk))[valid]
    units = np.arange(n_win * n_spk).reshape(n_win, n_spk)[valid]
    return cluster_points(embeddings[valid].reshape(-1, dim), windows, units, options, count)


def cluster_points(
    x: np.ndarray,
    windows: np.ndarray,
    units: np.ndarray,
    options: OverlapDiarizationOptions,
    count: SpeakerCount | None = None,
) -> np.ndarray:
    """Unit-length centroids ``(k, d)`` of the global speakers of unit-length points
    ``x`` (``(n, d)``, from :func:`unit_points`); ``windows`` and ``units`` say which
    window and which unit each point comes from (points of one window but different
    units never share a speaker). ``(0, d)`` when there are no points."""
    dim = x.shape[1] if x.ndim == 2 else 0
    if len(x) == 0:
        return np.zeros((0, dim))
    groups = np.asarray(windows)
    units = np.asarray(units)
    if len(x) > options.max_units:
        pick = np.linspace(0, len(x) - 1, options.max_units).round().astype(np.int64)
        x, groups, units = x[pick], groups[pick], units[pick]
    lo, hi = _bounds(count, len(x))
    min_size = min_cluster_size(len(x), options, lo)
    merges = constrained_average_linkage(
        x,
        groups,
        options.threshold if count is None or not count.given else np.inf,
        options.same_voice,
        units,
    )
    # too many speakers at the threshold: cut there, then reduce; too few: cut earlier
    natural = natural_cut(merges, options.threshold)
    labels = labels_after(len(x), merges[:natural])
    if hi is None or int((np.bincount(labels) >= min_size).sum()) <= hi:
        step = choose_cut(len(x), merges, options.threshold, min_size, lo, hi)
        if step != natural:
            labels = labels_after(len(x), merges[:step])
    sizes = np.bincount(labels)
    keep = [c for c in range(len(sizes)) if sizes[c] >= min_size]
    if not keep:
        keep = [int(np.argmax(sizes))]
    members = [np.flatnonzero(labels == c) for c in keep]
    # a request's count never holds apart what the calibrated distance calls one voice
    members = merge_close_centroids(x, members, options.merge_distance)
    if hi is not None and len(members) > hi:
        members = reduce_speakers(x, members, hi, options.outlier_share)
    centroids = np.stack([x[m].mean(axis=0) for m in members])
    return centroids / np.linalg.norm(centroids, axis=1, keepdims=True)


def min_cluster_size(n: int, options: OverlapDiarizationOptions, fewest: int = 1) -> int:
    """The fewest of ``n`` points a cluster needs to stand as a speaker of its own, when
    at least ``fewest`` speakers are asked for: ``min_cluster_units``, or
    ``min_cluster_share`` of the points (at most ``min_cluster_most``) if that is more,
    unless a request needs two or more speakers (one of them may be small); never more
    than an even share of the points among ``fewest`` speakers."""
    size = options.min_cluster_units
    if fewest <= 1:
        share = math.ceil(options.min_cluster_share * n - 1e-9)
        size = max(size, min(share, options.min_cluster_most))
    return min(size, max(1, n // max(fewest, 1)))


def merge_close_centroids(
    x: np.ndarray, members: Sequence[np.ndarray], max_distance: float
) -> list[np.ndarray]:
    """Clusters (index arrays into ``x``) after merging, closest first, every pair whose
    centroids are closer than ``max_distance`` (cosine)."""
    out = [np.asarray(m) for m in members]
    while len(out) > 1 and max_distance > 0:
        i, j, distance = _closest_centroids(x, out)
        if distance >= max_distance:
            break
        out[i] = np.concatenate([out[i], out[j]])
        del out[j]
    return out


def _closest_centroids(x: np.ndarray, clusters: Sequence[np.ndarray]) -> tuple[int, int, float]:
    """``(i, j, cosine distance)``, ``i < j``, of the two clusters (index arrays into
    ``x``, at least two) whose centroids are closest."""
    c = np.stack([x[m].mean(axis=0) for m in clusters])
    c /= np.maximum(np.linalg.norm(c, axis=1, keepdims=True), 1e-12)
    distance = 1.0 - c @ c.T
    np.fill_diagonal(distance, np.inf)
    i, j = sorted(divmod(int(np.argmin(distance)), len(clusters)))
    return i, j, float(distance[i, j])


def reduce_speakers(
    x: np.ndarray, members: Sequence[np.ndarray], most: int, outlier_share: float
) -> list[np.ndarray]:
    """At most ``most`` clusters (index arrays into ``x``): while there are more, the
    smallest is dropped if it holds less than ``outlier_share`` of the clustered points,
    otherwise the two whose centroids are closest (cosine) are merged."""
    out = [np.asarray(m) for m in members]
    total = sum(len(m) for m in out)
    while len(out) > max(most, 1):
        smallest = min(range(len(out)), key=lambda i: len(out[i]))
        if len(out[smallest]) < outlier_share * total:
            del out[smallest]
            continue
        i, j, _ = _closest_centroids(x, out)
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


def speaker_activity(
    window_starts: np.ndarray,
    scores: np.ndarray,
    activity: np.ndarray,
    assignment: np.ndarray,
    n_speakers: int,
    grid: FrameGrid,
    duration: float,
) -> np.ndarray:
    """Which global speakers talk at each frame: ``(frames, n_speakers)`` booleans on the
    segmentation's frame grid from time 0.

    Scores of each global speaker are averaged over the windows covering a frame; the
    number of speakers talking at a frame is the rounded mean of active local speakers
    over those windows; that many speakers with the highest scores are marked active.
    """
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
    return active


def turns_from_activity(active: np.ndarray, grid: FrameGrid, duration: float) -> list[SpeakerTurn]:
    """Speaker turns from :func:`speaker_activity`'s frames, sorted, speakers named
    ``s0``, ``s1``, ... in order of first turn."""
    step = grid.step_s
    raw: list[tuple[float, float, int]] = []
    half = grid.duration_s / 2
    for g in range(active.shape[1]):
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
    starts = np.asarray(window_starts, dtype=np.float64)
    activity = binarize(scores, opts.onset, opts.offset)
    units = unit_embeddings(starts, activity, grid, sub_embeddings, sub_windows, opts.min_exclusive)
    changes = change_points(
        sub_embeddings, sub_windows, opts.change_distance, opts.change_side, opts.change_span_s
    )
    points, windows, unit_ids = unit_points(
        starts, activity, grid, sub_embeddings, sub_windows, opts.min_exclusive, changes
    )
    centroids = cluster_points(points, windows, unit_ids, opts, count)
    if len(centroids) == 0 or len(starts) == 0:
        return []
    fewest = _bounds(count, len(points))[0]
    values = np.asarray(scores, dtype=np.float64)
    while True:
        assignment = assign_units(units, centroids)
        active = speaker_activity(
            starts, values, activity, assignment, len(centroids), grid, duration
        )
        if len(centroids) <= fewest or opts.min_speaker_s <= 0:
            break
        seconds = active.sum(axis=0) * grid.step_s
        weakest = int(np.argmin(seconds))
        if seconds[weakest] >= opts.min_speaker_s:
            break
        # too little speech to be a voice of its own: a fragment of another speaker's
        # (or a noise); its units go to the speakers left
        centroids = np.delete(centroids, weakest, axis=0)
    return turns_from_activity(active, grid, duration)


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
