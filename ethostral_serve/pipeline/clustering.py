"""Speaker clustering of window embeddings, and window labels → speaker turns.

Pure numpy: the embedding model is someone else's job. The steps are

1. :func:`cluster_embeddings` — spherical k-means (cosine) for k = 1, 2, …; the speaker
   count is the largest k before a solution first has two centroids closer than
   ``threshold`` (cosine distance) or a cluster covering less than ``min_cluster_s`` of
   speech, clamped to ``[min_speakers, max_speakers]``. Comparing cluster *centroids*
   (not single windows) keeps the test independent of how noisy single windows are.
2. :func:`windows_to_turns` — every window votes for its speaker on a fine frame grid
   inside the speech regions; the frame majority gives runs, runs shorter than
   ``min_turn_s`` are absorbed by a neighbour, and speakers are renamed ``s0``, ``s1``, …
   in order of first appearance.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ethostral_serve.pipeline.types import Span, SpeakerTurn


@dataclass(frozen=True)
class ClusteringOptions:
    """How embeddings are clustered and how window labels become turns."""

    threshold: float = 0.13
    """Smallest cosine distance allowed between two speakers' centroids."""
    min_speakers: int = 1
    max_speakers: int = 10
    min_cluster_s: float = 3.0
    """Every speaker must cover at least this much speech (seconds of window union)."""
    n_init: int = 10
    """k-means restarts per speaker count."""
    seed: int = 0
    """Seed of the k-means initialisation (results are deterministic)."""
    max_fit_windows: int = 4000
    """Above this many windows, k-means is fitted on a regular subsample (bounds time)."""
    frame_s: float = 0.01
    """Resolution of the per-frame vote."""
    min_turn_s: float = 0.3
    """Runs shorter than this inside a speech region are absorbed by a neighbour."""


def _normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def _centroids(x: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    out = np.zeros((k, x.shape[1]), dtype=np.float64)
    np.add.at(out, labels, x)
    return _normalise(out)


def _relabel_compact(labels: np.ndarray) -> np.ndarray:
    """Labels renumbered 0..k-1 in order of first occurrence."""
    _, first, inverse = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(np.argsort(first))
    return order[inverse].astype(np.int64)


def _union_length(windows: np.ndarray) -> float:
    """Seconds covered by the union of ``[start, end)`` windows."""
    if len(windows) == 0:
        return 0.0
    w = windows[np.argsort(windows[:, 0])]
    total, cur_s, cur_e = 0.0, float(w[0, 0]), float(w[0, 1])
    for s, e in w[1:]:
        if s > cur_e:
            total += cur_e - cur_s
            cur_s, cur_e = float(s), float(e)
        else:
            cur_e = max(cur_e, float(e))
    return total + cur_e - cur_s


def _spherical_kmeans(
    x: np.ndarray, k: int, rng: np.random.Generator, n_init: int, max_iter: int = 50
) -> np.ndarray:
    """Labels of the best of ``n_init`` k-means++-seeded spherical k-means runs on ``x``."""
    n = len(x)
    best, best_score = np.zeros(n, dtype=np.int64), -np.inf
    for _ in range(n_init):
        chosen = [int(rng.integers(n))]
        distance = np.maximum(1.0 - x @ x[chosen[0]], 0.0)
        for _ in range(1, k):
            total = float(distance.sum())
            pick = int(rng.choice(n, p=distance / total)) if total > 0 else int(rng.integers(n))
            chosen.append(pick)
            distance = np.minimum(distance, np.maximum(1.0 - x @ x[pick], 0.0))
        centroids = x[chosen].copy()
        labels = np.full(n, -1, dtype=np.int64)
        for _ in range(max_iter):
            new = np.argmax(x @ centroids.T, axis=1)
            if np.array_equal(new, labels):
                break
            labels = new
            updated = _centroids(x, labels, k)
            empty = np.bincount(labels, minlength=k) == 0
            updated[empty] = centroids[empty]
            centroids = updated
        score = float(np.max(x @ centroids.T, axis=1).sum())
        if score > best_score:
            best, best_score = labels, score
    return best


def _kmeans(x: np.ndarray, k: int, opts: ClusteringOptions) -> np.ndarray:
    """k-means labels of the unit vectors ``x`` (fitted on a subsample when ``x`` is large)."""
    rng = np.random.default_rng(opts.seed)
    fit = x
    if len(x) > opts.max_fit_windows:
        fit = x[np.linspace(0, len(x) - 1, opts.max_fit_windows).round().astype(np.int64)]
    labels = _spherical_kmeans(fit, k, rng, opts.n_init)
    if fit is not x:
        centroids = _centroids(fit, labels, k)
        labels = np.argmax(x @ centroids.T, axis=1)
    return _relabel_compact(labels)


def _acceptable(
    x: np.ndarray, windows: np.ndarray, labels: np.ndarray, k: int, opts: ClusteringOptions
) -> bool:
    """Whether a k-cluster solution looks like k distinct speakers."""
    if int(labels.max()) + 1 < k:
        return False
    centroids = _centroids(x, labels, k)
    distance = 1.0 - centroids @ centroids.T
    if float(distance[np.triu_indices(k, 1)].min()) < opts.threshold:
        return False
    return all(_union_length(windows[labels == c]) >= opts.min_cluster_s for c in range(k))


def cluster_embeddings(
    embeddings: np.ndarray,
    windows: np.ndarray | None = None,
    options: ClusteringOptions | None = None,
) -> np.ndarray:
    """Speaker label (0..k-1, by first occurrence) of each embedding; k is estimated.

    ``embeddings`` is ``(n, d)``; ``windows`` is ``(n, 2)`` start/end seconds of each
    embedding's window (used to measure how much speech a cluster covers; defaults to
    one-second windows one second apart). ``k`` lies in ``[min_speakers, max_speakers]``
    but never above ``n``.
    """
    opts = options or ClusteringOptions()
    x = np.asarray(embeddings, dtype=np.float64)
    n = len(x)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if windows is None:
        starts = np.arange(n, dtype=np.float64)
        windows = np.stack([starts, starts + 1.0], axis=1)
    win = np.asarray(windows, dtype=np.float64).reshape(n, 2)
    n_max = max(1, min(opts.max_speakers, n))
    n_min = max(1, min(opts.min_speakers, n_max))
    if n_max == 1:
        return np.zeros(n, dtype=np.int64)
    x = _normalise(x.reshape(n, -1))

    best = np.zeros(n, dtype=np.int64)
    for k in range(2, n_max + 1):
        labels = _kmeans(x, k, opts)
        if k > n_min and not _acceptable(x, win, labels, k, opts):
            break
        best = labels  # below min_speakers every k is taken
    return _relabel_compact(best)


def windows_to_turns(
    windows: np.ndarray,
    scores: np.ndarray,
    regions: Sequence[Span],
    options: ClusteringOptions | None = None,
) -> list[SpeakerTurn]:
    """Speaker turns inside ``regions`` from per-window speaker ``scores``.

    ``windows`` is ``(n, 2)`` start/end seconds; ``scores`` is ``(n, k)`` (one-hot labels
    or similarities; higher is more likely). Each frame of a region takes the speaker
    with the largest summed score of the windows covering it; a frame no window covers
    takes the speaker of the nearest window. Turns are sorted, do not overlap, lie inside
    the regions, and speakers are named ``s0``, ``s1``, … by first appearance.
    """
    opts = options or ClusteringOptions()
    win = np.asarray(windows, dtype=np.float64).reshape(-1, 2)
    sc = np.asarray(scores, dtype=np.float64)
    spans = sorted((r for r in regions if r.end > r.start), key=lambda r: r.start)
    if len(win) == 0 or not spans or sc.size == 0:
        return []
    sc = sc.reshape(len(win), -1)
    fs = opts.frame_s
    # merge overlapping regions so turns cannot overlap
    merged: list[list[float]] = []
    for r in spans:
        if merged and r.start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], r.end)
        else:
            merged.append([r.start, r.end])

    origin = min(merged[0][0], float(win[:, 0].min()))
    last = max(merged[-1][1], float(win[:, 1].max()))
    n_frames = round((last - origin) / fs) + 1
    a = np.clip(np.round((win[:, 0] - origin) / fs).astype(np.int64), 0, n_frames)
    b = np.clip(np.round((win[:, 1] - origin) / fs).astype(np.int64), 0, n_frames)
    b = np.maximum(b, a + 1)
    acc = np.zeros((n_frames + 2, sc.shape[1]))
    np.add.at(acc, a, sc)
    np.add.at(acc, b, -sc)
    acc = np.cumsum(acc, axis=0)[:n_frames]
    count = np.zeros(n_frames + 2)
    np.add.at(count, a, 1.0)
    np.add.at(count, b, -1.0)
    covered = np.cumsum(count)[:n_frames] > 0.5
    frame_label = np.argmax(acc, axis=1)
    if not covered.all():
        # uncovered frames copy the label of the nearest window centre
        centres = np.round(((win[:, 0] + win[:, 1]) / 2 - origin) / fs).astype(np.int64)
        order = np.argsort(centres)
        centres, window_label = centres[order], np.argmax(sc[order], axis=1)
        idx = np.flatnonzero(~covered)
        pos = np.searchsorted(centres, idx)
        left = np.clip(pos - 1, 0, len(centres) - 1)
        right = np.clip(pos, 0, len(centres) - 1)
        nearest = np.where(np.abs(idx - centres[left]) <= np.abs(centres[right] - idx), left, right)
        frame_label[idx] = window_label[nearest]

    raw: list[tuple[float, float, int]] = []
    min_frames = max(1, round(opts.min_turn_s / fs))
    for start, end in merged:
        f0 = int(np.clip(round((start - origin) / fs), 0, n_frames - 1))
        f1 = int(np.clip(round((end - origin) / fs), f0 + 1, n_frames))
        runs = _runs(frame_label[f0:f1])
        runs = _absorb_short_runs(runs, acc[f0:f1], min_frames)
        for lab, r0, r1 in runs:
            t0 = start if r0 == 0 else origin + (f0 + r0) * fs
            t1 = end if r1 == f1 - f0 else origin + (f0 + r1) * fs
            if t1 > t0:
                raw.append((t0, t1, lab))
    return _name_turns(raw)


def _runs(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """(label, start, end) runs of equal consecutive labels."""
    if len(labels) == 0:
        return []
    change = np.flatnonzero(np.diff(labels)) + 1
    bounds = np.concatenate([[0], change, [len(labels)]])
    return [(int(labels[s]), int(s), int(e)) for s, e in itertools.pairwise(bounds)]


def _absorb_short_runs(
    runs: list[tuple[int, int, int]], acc: np.ndarray, min_frames: int
) -> list[tuple[int, int, int]]:
    """Give runs shorter than ``min_frames`` to the neighbour that scores higher there."""
    runs = list(runs)
    while len(runs) > 1:
        lengths = [e - s for _, s, e in runs]
        i = int(np.argmin(lengths))
        if lengths[i] >= min_frames:
            break
        _, s, e = runs[i]
        candidates = [j for j in (i - 1, i + 1) if 0 <= j < len(runs)]
        j = max(candidates, key=lambda j: float(acc[s:e, runs[j][0]].sum()))
        runs[i] = (runs[j][0], s, e)
        # merge equal neighbours
        out: list[tuple[int, int, int]] = []
        for r in runs:
            if out and out[-1][0] == r[0]:
                out[-1] = (r[0], out[-1][1], r[2])
            else:
                out.append(r)
        runs = out
    return runs


def _name_turns(raw: list[tuple[float, float, int]]) -> list[SpeakerTurn]:
    """Sorted turns; touching turns of one speaker merged; ``s0``, ``s1``, … by first turn."""
    raw.sort(key=lambda t: t[0])
    names: dict[int, str] = {}
    turns: list[SpeakerTurn] = []
    for t0, t1, lab in raw:
        name = names.setdefault(lab, f"s{len(names)}")
        if turns and turns[-1].speaker == name and t0 - turns[-1].end < 1e-6:
            turns[-1] = SpeakerTurn(turns[-1].start, max(turns[-1].end, t1), name)
        else:
            turns.append(SpeakerTurn(t0, t1, name))
    return turns


def diarize_windows(
    embeddings: np.ndarray,
    windows: np.ndarray,
    regions: Sequence[Span],
    options: ClusteringOptions | None = None,
) -> list[SpeakerTurn]:
    """Cluster window ``embeddings`` and return the speaker turns inside ``regions``."""
    opts = options or ClusteringOptions()
    emb = np.asarray(embeddings, dtype=np.float64)
    if len(emb) == 0:
        return []
    labels = cluster_embeddings(emb, windows, opts)
    return windows_to_turns(windows, np.eye(int(labels.max()) + 1)[labels], regions, opts)
