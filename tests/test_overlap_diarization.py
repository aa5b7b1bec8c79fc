"""Overlap-aware diarization maths on synthetic arrays (no models)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ethostral_serve.pipeline.overlap_diarization import (
    FrameGrid,
    OverlapDiarizationOptions,
    assign_units,
    binarize,
    change_points,
    choose_cut,
    cluster_units,
    constrained_average_linkage,
    diarize_segmentation,
    labels_after,
    merge_close_centroids,
    min_cluster_size,
    reduce_speakers,
    speaker_activity,
    speech_regions,
    turns_from_activity,
    unit_embeddings,
    unit_points,
)
from ethostral_serve.pipeline.types import MAX_SPEAKERS, SpeakerCount, SpeakerTurn

# the frame grid of the bundled pyannote segmentation model
GRID = FrameGrid(step_s=0.016875, duration_s=0.0619375, frames=293, window_s=5.0)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def _hysteresis_loop(x: np.ndarray, onset: float, offset: float) -> np.ndarray:
    """Frame-by-frame reference of hysteresis thresholding for one score track."""
    out, state = np.zeros(len(x), bool), False
    for i, v in enumerate(x):
        if v > onset:
            state = True
        elif v < offset:
            state = False
        out[i] = state
    return out


# -- binarize ---------------------------------------------------------------------------


def test_hysteresis_stays_on_between_onset_and_offset() -> None:
    track = np.array([0.45, 0.1, 0.6, 0.45, 0.41, 0.35, 0.45, 0.55, 0.2, 0.45])
    scores = track[None, :, None]
    got = binarize(scores, onset=0.5, offset=0.4)[0, :, 0]
    # 0.45 at the start: no decisive event yet, so off; 0.45/0.41 after 0.6 stay on;
    # 0.45 after 0.35 stays off
    expected = [False, False, True, True, True, False, False, True, False, False]
    assert got.tolist() == expected
    assert got.dtype == bool


def test_hysteresis_matches_a_frame_loop_on_random_scores() -> None:
    rng = np.random.default_rng(0)
    scores = rng.uniform(0, 1, (4, 200, 3))
    got = binarize(scores, onset=0.6, offset=0.3)
    assert got.shape == scores.shape
    for w, k in itertools.product(range(4), range(3)):
        np.testing.assert_array_equal(got[w, :, k], _hysteresis_loop(scores[w, :, k], 0.6, 0.3))


def test_binarize_is_plain_thresholding_when_offset_equals_onset() -> None:
    rng = np.random.default_rng(1)
    scores = rng.uniform(0, 1, (3, 50, 3))
    np.testing.assert_array_equal(binarize(scores, 0.5, 0.5), scores > 0.5)
    # an offset above the onset cannot widen anything either
    np.testing.assert_array_equal(binarize(scores, 0.5, 0.7), scores > 0.5)


# -- constrained average linkage ---------------------------------------------------------


def _labels(x: np.ndarray, groups: np.ndarray, max_distance: float = np.inf) -> list[int]:
    merges = constrained_average_linkage(x, groups, max_distance)
    return labels_after(len(x), merges).tolist()


def test_units_of_one_window_never_share_a_cluster_even_when_identical() -> None:
    v = _unit(np.array([1.0, 0.0, 0.0]))
    x = np.stack([v, v, v])
    assert constrained_average_linkage(x, np.array([0, 0, 0])) == []
    assert _labels(x, np.array([0, 0, 0])) == [0, 1, 2]


def test_cannot_link_propagates_through_merges() -> None:
    # a and b are in one window; c (another window) is identical to both: c may join
    # one of them, and then the merged cluster must not take the other
    v = _unit(np.array([1.0, 0.0]))
    merges = constrained_average_linkage(np.stack([v, v, v]), np.array([0, 0, 1]))
    assert len(merges) == 1
    labels = labels_after(3, merges)
    assert labels[0] != labels[1]
    assert len(set(labels.tolist())) == 2


def test_similar_units_of_different_windows_merge() -> None:
    rng = np.random.default_rng(2)
    a, b = _unit(rng.normal(size=(2, 16)))
    b = _unit(b - (b @ a) * a)  # orthogonal to a
    noise = rng.normal(scale=0.02, size=(6, 16))
    x = _unit(np.stack([a, b, a, b, a, b]) + noise)
    groups = np.array([0, 0, 1, 1, 2, 2])
    assert _labels(x, groups, max_distance=0.25) == [0, 1, 0, 1, 0, 1]
    # without a distance limit the constraints alone stop it: a and b share windows
    assert _labels(x, groups) == [0, 1, 0, 1, 0, 1]


def test_merging_stops_at_the_distance_limit() -> None:
    # two units at cosine distance 0.3
    angle = np.arccos(0.7)
    x = np.array([[1.0, 0.0], [np.cos(angle), np.sin(angle)]])
    groups = np.array([0, 1])
    assert constrained_average_linkage(x, groups, 0.25) == []
    [(kept, absorbed, distance)] = constrained_average_linkage(x, groups, 0.35)
    assert (kept, absorbed) == (0, 1)
    assert distance == pytest.approx(0.3)
    assert labels_after(2, []).tolist() == [0, 1]
    assert constrained_average_linkage(np.zeros((1, 4)), np.zeros(1)) == []


def test_linkage_is_average_linkage() -> None:
    """Without constraints it builds scipy's average-linkage tree on cosine distance."""
    from scipy.cluster.hierarchy import fcluster, linkage

    rng = np.random.default_rng(3)
    centres = _unit(rng.normal(size=(4, 8)))
    x = _unit(centres[rng.integers(0, 4, 40)] + rng.normal(scale=0.35, size=(40, 8)))
    merges = constrained_average_linkage(x, np.arange(40))
    tree = linkage(x, "average", metric="cosine")
    assert len(merges) == 39
    np.testing.assert_allclose([d for _, _, d in merges], tree[:, 2], atol=1e-9)
    for threshold in (0.2, 0.4, 0.7):
        step = sum(d <= threshold for _, _, d in merges)
        ours = labels_after(40, merges[:step])
        theirs = fcluster(tree, threshold, "distance")
        np.testing.assert_array_equal(ours[:, None] == ours, theirs[:, None] == theirs)


def test_cut_honours_cluster_bounds() -> None:
    rng = np.random.default_rng(4)
    basis = _unit(rng.normal(size=(3, 32)))
    x = _unit(np.repeat(basis, 4, axis=0) + rng.normal(scale=0.01, size=(12, 32)))
    merges = constrained_average_linkage(x, np.arange(12))

    def clusters(lo: int, hi: int | None, min_size: int = 1) -> np.ndarray:
        return labels_after(12, merges[: choose_cut(12, merges, 0.25, min_size, lo, hi)])

    assert len(set(clusters(1, None).tolist())) == 3
    # at least 5 clusters: merging stops early, within the true speakers
    five = clusters(5, None)
    assert len(set(five.tolist())) == 5
    for c in set(five.tolist()):
        assert len({i // 4 for i in np.flatnonzero(five == c)}) == 1
    # at most 2 clusters: merging goes on past the threshold
    assert len(set(clusters(1, 2).tolist())) == 2
    # only clusters of at least min_size units count: 3 large ones at the natural cut
    assert choose_cut(12, merges, 0.25, 4, 3, 3) == choose_cut(12, merges, 0.25, 1, 1, None)
    # labels are numbered by first occurrence
    assert clusters(1, 2)[0] == 0


# -- cluster_units / assign_units -------------------------------------------------------


def _units(rng: np.random.Generator, per_window: list[list[int | None]], basis: np.ndarray):
    """(windows, 3, d) unit embeddings: speaker index per local slot, None for NaN."""
    out = np.full((len(per_window), 3, basis.shape[1]), np.nan)
    for w, slots in enumerate(per_window):
        for k, spk in enumerate(slots):
            if spk is not None:
                out[w, k] = _unit(basis[spk] + rng.normal(scale=0.03, size=basis.shape[1]))
    return out


def test_cluster_units_finds_the_speakers_and_honours_counts() -> None:
    rng = np.random.default_rng(5)
    basis = _unit(rng.normal(size=(3, 32)))
    layout: list[list[int | None]] = [[0, None, None], [0, 1, None], [None, 1, 0]] * 3
    layout += [[2, None, None], [None, 2, 1]] * 2
    units = _units(rng, layout, basis)
    opts = OverlapDiarizationOptions()

    free = cluster_units(units, opts)
    assert free.shape == (3, 32)
    np.testing.assert_allclose(np.linalg.norm(free, axis=1), 1.0)
    # each true speaker has its own centroid
    assert sorted(np.argmax(free @ basis.T, axis=1).tolist()) == [0, 1, 2]

    for k in (1, 2, 3, 4):
        assert len(cluster_units(units, opts, SpeakerCount(num=k))) == k
    assert len(cluster_units(units, opts, SpeakerCount(max=2))) == 2
    assert len(cluster_units(units, opts, SpeakerCount(min=4))) == 4
    assert len(cluster_units(units, opts, SpeakerCount(min=2, max=5))) == 3
    # a count larger than the number of units gives one centroid per unit
    two_units = _units(rng, [[0, 1, None]], basis)
    assert len(cluster_units(two_units, opts, SpeakerCount(num=5))) == 2


def _scattered_voice_units(seed: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(windows, 3, d) units of two speakers: A's units come from two nearby modes (cosine
    0.8) and scatter widely around them (cosine about 0.7 to their mode), as a voice's
    windows do in a reverberant room; B talks in every window. Returns (units, a, b)."""
    rng = np.random.default_rng(seed)
    d = 128
    e = np.eye(d)
    a, b = e[0], e[3]
    modes = [_unit(a + 0.5 * e[1]), _unit(a + 0.5 * e[2])]
    units = np.full((40, 3, d), np.nan)
    for w in range(40):
        noise = rng.normal(size=(2, d))
        noise[:, :4] = 0.0
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        units[w, 0] = _unit(modes[w // 20] + noise[0])
        units[w, 1] = _unit(b + noise[1])
    return units, a, b


def test_close_centroids_merge_a_voice_that_average_linkage_split() -> None:
    units, a, b = _scattered_voice_units()
    split = cluster_units(units, OverlapDiarizationOptions(threshold=0.55))
    # between A's two modes the mean pairwise distance (about 0.6) is above the
    # threshold, within a mode (about 0.5) below it: A comes back as two speakers
    assert len(split) == 3
    opts = OverlapDiarizationOptions(threshold=0.55, merge_distance=0.36)
    merged = cluster_units(units, opts)
    assert len(merged) == 2
    assert sorted(np.argmax(merged @ np.stack([a, b]).T, axis=1).tolist()) == [0, 1]
    # a count does not keep one voice apart: asking for three gives A's two halves,
    # which the merge joins again; without the merge the count is met
    assert len(cluster_units(units, opts, SpeakerCount(num=3))) == 2
    assert len(cluster_units(units, opts, SpeakerCount(min=3))) == 2
    unmerged = OverlapDiarizationOptions(threshold=0.55)
    assert len(cluster_units(units, unmerged, SpeakerCount(num=3))) == 3
    # different speakers (centroids about 1.0 apart) stay apart below that distance
    wide = OverlapDiarizationOptions(threshold=0.55, merge_distance=0.9)
    assert len(cluster_units(units, wide)) == 2


def test_merge_close_centroids_closest_first() -> None:
    e = np.eye(4)
    x = np.stack([e[0], e[0], _unit(e[0] + 0.3 * e[1]), _unit(e[0] + 0.9 * e[1]), e[2], e[3]])
    members = [np.array([0, 1]), np.array([2]), np.array([3]), np.array([4]), np.array([5])]
    # [0, 1] and [2] are closest (distance 0.04), then their union and [3] (0.20); e2
    # and e3 are orthogonal to everything
    out = merge_close_centroids(x, members, 0.15)
    assert sorted(sorted(m.tolist()) for m in out) == [[0, 1, 2], [3], [4], [5]]
    out = merge_close_centroids(x, members, 0.5)
    assert sorted(sorted(m.tolist()) for m in out) == [[0, 1, 2, 3], [4], [5]]
    # 0 means never
    assert len(merge_close_centroids(x, members, 0.0)) == 5
    # every unit stays in exactly one cluster
    out = merge_close_centroids(x, members, 1.5)
    assert len(out) == 1 and sorted(out[0].tolist()) == [0, 1, 2, 3, 4, 5]


def test_counts_hold_even_when_cannot_links_forbid_merging() -> None:
    """Two speakers who always share a window cannot merge in the linkage; a count of
    one still gives one centroid (their clusters' mean), and the local speakers then
    share it."""
    a, b = np.eye(3)[:2]
    units = np.full((4, 3, 3), np.nan)
    units[:, 0] = a
    units[:3, 1] = b
    opts = OverlapDiarizationOptions()
    for count in (SpeakerCount(num=1), SpeakerCount(max=1)):
        centroids = cluster_units(units, opts, count)
        assert centroids.shape == (1, 3)
        np.testing.assert_allclose(centroids[0], _unit(4 * a + 3 * b))
        assert assign_units(units, centroids)[0].tolist() == [0, 0, -1]
    assert len(cluster_units(units, opts)) == 2


def test_reduce_speakers_drops_stray_clusters_before_merging_voices() -> None:
    e = np.eye(4)
    # three voices of 10 points each (A and B close, C far) and a stray point
    x = np.stack([e[0]] * 10 + [_unit(e[0] + 0.5 * e[1])] * 10 + [e[2]] * 10 + [e[3]])
    members = [np.arange(0, 10), np.arange(10, 20), np.arange(20, 30), np.array([30])]
    # at most three: the stray point (1 of 31, under a tenth) goes, no voice merges
    out = reduce_speakers(x, members, 3, 0.1)
    assert sorted(sorted(m.tolist()) for m in out) == [
        list(range(10)),
        list(range(10, 20)),
        list(range(20, 30)),
    ]
    # at most two: then the two closest voices merge
    out = reduce_speakers(x, members, 2, 0.1)
    assert sorted(sorted(m.tolist()) for m in out) == [list(range(20)), list(range(20, 30))]
    # with no share, only merges: A and B become one, and the stray stands
    out = reduce_speakers(x, members, 3, 0.0)
    assert sorted(len(m) for m in out) == [1, 10, 20]
    assert len(reduce_speakers(x, members, 1, 0.1)) == 1
    assert len(reduce_speakers(x, members, 5, 0.1)) == 4


def test_a_count_below_what_is_found_drops_a_stray_cluster_first() -> None:
    """Two voices and a stray far from both (a noise): asked for two, the two voices
    stay apart and the stray joins one of them (cutting further up the tree would merge
    the voices first, since the stray is farthest from everything)."""
    rng = np.random.default_rng(11)
    e = np.eye(32)
    # the voices lie 0.39 apart (above the threshold), the stray about 1.0 from both
    basis = np.stack([_unit(e[0] + 0.8 * e[1]), _unit(e[0] + 0.8 * e[2]), e[5]])
    layout: list[list[int | None]] = [[0, None, None], [1, None, None]] * 20
    layout += [[2, None, None]] * 3  # 3 of 43 points
    units = _units(rng, layout, basis)
    opts = OverlapDiarizationOptions()
    assert len(cluster_units(units, opts)) == 3
    for count in (SpeakerCount(num=2), SpeakerCount(max=2)):
        two = cluster_units(units, opts, count)
        assert sorted(np.argmax(two @ basis.T, axis=1).tolist()) == [0, 1]


def test_cluster_units_drops_clusters_too_small() -> None:
    rng = np.random.default_rng(6)
    basis = _unit(rng.normal(size=(3, 32)))
    layout: list[list[int | None]] = [[0, 1, None]] * 5 + [[2, 0, None]]  # speaker 2: one unit
    units = _units(rng, layout, basis)
    opts = OverlapDiarizationOptions(min_cluster_units=2)
    free = cluster_units(units, opts)
    assert sorted(np.argmax(free @ basis.T, axis=1).tolist()) == [0, 1]
    # as in pyannote, a count is met with clusters of at least min_cluster_units units:
    # a big speaker is split rather than a one-unit voice promoted
    assert len(cluster_units(units, opts, SpeakerCount(num=3))) == 3
    alone = cluster_units(units, OverlapDiarizationOptions(min_cluster_units=1))
    assert sorted(np.argmax(alone @ basis.T, axis=1).tolist()) == [0, 1, 2]


def test_min_cluster_size_grows_with_the_points_up_to_a_cap() -> None:
    opts = OverlapDiarizationOptions(min_cluster_units=2, min_cluster_share=0.03)
    assert min_cluster_size(40, opts) == 2  # 1.2 points: the floor holds
    assert min_cluster_size(100, opts) == 3
    assert min_cluster_size(200, opts) == 6
    assert min_cluster_size(1000, opts) == 12  # min_cluster_most
    # a request for several speakers may need a small one: only the floor
    assert min_cluster_size(200, opts, fewest=2) == 2
    # never more than an even share of the points among the speakers asked for
    assert min_cluster_size(3, opts, fewest=3) == 1
    assert min_cluster_size(200, OverlapDiarizationOptions(min_cluster_units=2)) == 2


def test_a_fragment_too_small_for_a_long_recording_joins_a_speaker() -> None:
    """Two voices of 60 windows each, and a third voice held by 3 units: over 123
    units, 3 % is 4 points, so the fragment stands only with the share off (or when a
    request needs at least three speakers)."""
    rng = np.random.default_rng(8)
    basis = _unit(rng.normal(size=(3, 32)))
    layout: list[list[int | None]] = [[0, 1, None]] * 60 + [[2, None, None]] * 3
    units = _units(rng, layout, basis)
    share = OverlapDiarizationOptions(min_cluster_share=0.03)
    found = cluster_units(units, share)
    assert sorted(np.argmax(found @ basis.T, axis=1).tolist()) == [0, 1]
    off = cluster_units(units, OverlapDiarizationOptions())
    assert sorted(np.argmax(off @ basis.T, axis=1).tolist()) == [0, 1, 2]
    for count in (SpeakerCount(num=3), SpeakerCount(min=3)):
        kept = cluster_units(units, share, count)
        assert sorted(np.argmax(kept @ basis.T, axis=1).tolist()) == [0, 1, 2], count
    # an upper bound alone requires no second speaker: the share applies
    capped = cluster_units(units, share, SpeakerCount(max=4))
    assert sorted(np.argmax(capped @ basis.T, axis=1).tolist()) == [0, 1]


def test_cluster_units_subsamples_many_units() -> None:
    rng = np.random.default_rng(7)
    basis = _unit(rng.normal(size=(2, 16)))
    units = _units(rng, [[0, 1, None]] * 60, basis)
    centroids = cluster_units(units, OverlapDiarizationOptions(max_units=20))
    assert sorted(np.argmax(centroids @ basis.T, axis=1).tolist()) == [0, 1]


def test_cluster_units_without_valid_units() -> None:
    empty = np.full((4, 3, 8), np.nan)
    assert cluster_units(empty, OverlapDiarizationOptions()).shape == (0, 8)
    assert assign_units(empty, np.zeros((0, 8))).tolist() == [[-1] * 3] * 4


def test_assign_units_is_one_to_one_within_a_window() -> None:
    rng = np.random.default_rng(8)
    basis = _unit(rng.normal(size=(3, 16)))
    centroids = basis.copy()
    # window 0: both local speakers sound like speaker 0, the second slightly less
    near = _unit(basis[0] + 0.3 * basis[1])
    units = np.full((3, 3, 16), np.nan)
    units[0, 0], units[0, 1] = basis[0], near
    units[1, 1], units[1, 2] = basis[2], basis[1]
    units[2, 0] = basis[1]
    got = assign_units(units, centroids)
    assert got[0].tolist() == [0, 1, -1]
    assert got[1].tolist() == [-1, 2, 1]
    assert got[2].tolist() == [1, -1, -1]
    # more local speakers than centroids: each takes its nearest
    more = assign_units(units, centroids[:1])
    assert more[0].tolist() == [0, 0, -1]


# -- reconstruction -------------------------------------------------------------------------


def test_reconstruction_gives_overlap_to_both_speakers() -> None:
    """One window, two local speakers both on in its second half."""
    grid = FrameGrid(step_s=0.1, duration_s=0.1, frames=10, window_s=1.0)
    scores = np.full((1, 10, 2), 0.05)
    scores[0, :, 0] = 0.9
    scores[0, 5:, 1] = 0.8
    activity = scores > 0.5
    active = speaker_activity(
        np.array([0.0]), scores, activity, np.array([[1, 0]]), 2, grid, duration=1.0
    )
    # frames on the grid from time 0 (plus padding); global 1 is local 0
    assert active[:10, 1].all() and not active[10:, 1].any()
    assert active[5:10, 0].all() and not active[:5, 0].any() and not active[10:, 0].any()
    turns = turns_from_activity(active, grid, duration=1.0)
    # global 1 (local 0) talks first, so it is s0
    assert turns == [SpeakerTurn(0.05, 1.0, "s0"), SpeakerTurn(0.55, 1.0, "s1")]
    unassigned = np.array([[-1, -1]])
    nobody = speaker_activity(np.array([0.0]), scores, activity, unassigned, 0, grid, 1.0)
    assert nobody.shape[1] == 0 and turns_from_activity(nobody, grid, 1.0) == []


# -- the whole thing on a synthetic conversation ----------------------------------------

DURATION = 20.0
TRUTH = {  # who talks when; A and B overlap over 6.0-7.5
    "A": [(1.0, 7.5), (17.5, 19.5)],
    "B": [(6.0, 12.0)],
    "C": [(13.0, 17.0)],
}


def _talks(who: str, t: np.ndarray) -> np.ndarray:
    return np.any([(a <= t) & (t < b) for a, b in TRUTH[who]], axis=0)


def _synthetic(seed: int = 0, with_slots: bool = False):
    """Windows every 1 s with permuted local slots, and 1 s sub-window embeddings
    (and, if asked, ``slots[w, g]``: the local slot of speaker ``g`` in window ``w``)."""
    rng = np.random.default_rng(seed)
    starts = np.arange(0.0, DURATION - GRID.window_s + 1e-9, 1.0)
    scores = np.full((len(starts), GRID.frames, 3), 0.05)
    slots = np.zeros((len(starts), 3), dtype=np.int64)
    for w, t0 in enumerate(starts):
        slots[w] = rng.permutation(3)  # permutation-invariant output: slots mean nothing
        centres = GRID.centres(float(t0))
        for g, who in enumerate("ABC"):
            scores[w, _talks(who, centres), slots[w, g]] = 0.9
    basis = _unit(rng.normal(size=(3, 64)))
    sub_windows, sub_embeddings = [], []
    for s in np.arange(0.0, DURATION - 1.0 + 1e-9, 0.25):
        t = np.linspace(s, s + 1.0, 101)[:-1]
        talking = np.stack([_talks(who, t) for who in "ABC"]).mean(axis=1)
        if talking.sum() == 0:
            continue  # no speech: not embedded
        v = talking @ basis + rng.normal(scale=0.05, size=64)
        sub_windows.append((s, s + 1.0))
        sub_embeddings.append(_unit(v))
    out = (starts, scores, np.array(sub_embeddings), np.array(sub_windows))
    return (*out, slots) if with_slots else out


def _by_speaker(turns: list[SpeakerTurn]) -> dict[str, list[tuple[float, float]]]:
    out: dict[str, list[tuple[float, float]]] = {}
    for t in turns:
        out.setdefault(t.speaker, []).append((t.start, t.end))
    return out


def _active(turns: list[SpeakerTurn], t: float) -> set[str]:
    return {x.speaker for x in turns if x.start <= t < x.end}


def _majority(turns: list[SpeakerTurn], who: str) -> str:
    t = np.arange(0.0, DURATION, 0.01)
    t = t[_talks(who, t)]
    speakers = sorted({x.speaker for x in turns})
    on = [sum(len(_active(turns, u) & {s}) for u in t) for s in speakers]
    return speakers[int(np.argmax(on))]


def test_diarize_segmentation_finds_three_speakers_and_the_overlap() -> None:
    starts, scores, emb, subs = _synthetic()
    turns = diarize_segmentation(starts, scores, GRID, emb, subs, DURATION)

    assert turns == sorted(turns, key=lambda t: (t.start, t.end))
    assert turns[0].speaker == "s0"
    spans = _by_speaker(turns)
    assert len(spans) == 3
    # map each true speaker to the found speaker who is on most of its time
    found = {who: _majority(turns, who) for who in "ABC"}
    assert len(set(found.values())) == 3
    for who, intervals in TRUTH.items():
        got = spans[found[who]]
        assert len(got) == len(intervals), (who, got)
        for (a, b), (ga, gb) in zip(intervals, got, strict=True):
            assert abs(ga - a) < 0.1 and abs(gb - b) < 0.1, (who, (a, b), (ga, gb))

    # the overlapped stretch is covered by A and B at once, everything else by one at most
    for t in np.arange(6.05, 7.45, 0.05):
        assert _active(turns, t) == {found["A"], found["B"]}, t
    for t in np.arange(0.0, DURATION, 0.05):
        if not 5.9 < t < 7.6:
            assert len(_active(turns, t)) <= 1, t
    for t in (0.5, 12.5, 17.25, 19.75):  # silences
        assert _active(turns, t) == set()


def test_diarize_segmentation_with_a_speaker_count() -> None:
    starts, scores, emb, subs = _synthetic()
    for num in (1, 2, 3):
        turns = diarize_segmentation(
            starts, scores, GRID, emb, subs, DURATION, count=SpeakerCount(num=num)
        )
        assert len({t.speaker for t in turns}) == num
    one = diarize_segmentation(starts, scores, GRID, emb, subs, DURATION, count=SpeakerCount(num=1))
    # one speaker cannot overlap itself: speech covered once, no turn overlaps the next
    for a, b in itertools.pairwise(one):
        assert a.end <= b.start
    assert abs(one[0].start - 1.0) < 0.1 and abs(one[0].end - 12.0) < 0.1


def test_diarize_segmentation_with_a_lower_speaker_bound() -> None:
    starts, scores, emb, subs = _synthetic()
    # A's two stretches (1-7.5 s and 17.5-19.5 s) can be told apart: four speakers
    for count in (SpeakerCount(num=4), SpeakerCount(min=4)):
        turns = diarize_segmentation(starts, scores, GRID, emb, subs, DURATION, count=count)
        assert len({t.speaker for t in turns}) == 4, count
    # a bound that no cut can meet is best effort: the three voices are kept
    turns = diarize_segmentation(
        starts, scores, GRID, emb, subs, DURATION, count=SpeakerCount(min=6)
    )
    assert len({t.speaker for t in turns}) == 3


def test_a_speaker_with_too_little_speech_is_dropped_unless_a_count_needs_it() -> None:
    """C talks for 4 s (13-17 s), A for 8.5 s and B for 6 s."""
    starts, scores, emb, subs = _synthetic()

    def speakers(min_speaker_s: float, count: SpeakerCount | None = None) -> list[SpeakerTurn]:
        opts = OverlapDiarizationOptions(min_speaker_s=min_speaker_s)
        return diarize_segmentation(starts, scores, GRID, emb, subs, DURATION, opts, count)

    assert len({t.speaker for t in speakers(3.0)}) == 3
    turns = speakers(5.0)
    assert len({t.speaker for t in turns}) == 2
    # C's speech is not lost: it goes to one of the speakers left
    assert all(len(_active(turns, t)) == 1 for t in np.arange(13.1, 16.9, 0.1))
    assert _majority(turns, "A") != _majority(turns, "B")
    # a request that needs three speakers keeps C
    for count in (SpeakerCount(num=3), SpeakerCount(min=3)):
        assert len({t.speaker for t in speakers(5.0, count)}) == 3, count
    # every speaker is below 10 s, but one is always left, or as many as a bound asks
    assert len({t.speaker for t in speakers(10.0)}) == 1
    assert len({t.speaker for t in speakers(10.0, SpeakerCount(min=2))}) == 2


def test_diarize_segmentation_is_stable_under_other_slot_permutations() -> None:
    for seed in (1, 2, 3):
        starts, scores, emb, subs = _synthetic(seed)
        turns = diarize_segmentation(starts, scores, GRID, emb, subs, DURATION)
        assert len({t.speaker for t in turns}) == 3
        assert len(_active(turns, 6.75)) == 2


def test_diarize_segmentation_without_speech_or_embeddings() -> None:
    starts, scores, emb, subs = _synthetic()
    silent = np.full_like(scores, 0.05)
    assert diarize_segmentation(starts, silent, GRID, emb, subs, DURATION) == []
    nothing = diarize_segmentation(starts, scores, GRID, np.zeros((0, 64)), np.zeros((0, 2)), 20.0)
    assert nothing == []
    empty = diarize_segmentation(np.zeros(0), np.zeros((0, GRID.frames, 3)), GRID, emb, subs, 2.0)
    assert empty == []


def _alone_share(who: str, a: float, b: float) -> float:
    """Share of ``[a, b)`` in which ``who`` talks and nobody else does."""
    t = np.linspace(a, b, 401)[:-1]
    others = np.any([_talks(o, t) for o in "ABC" if o != who], axis=0)
    return float(np.mean(_talks(who, t) & ~others))


def test_unit_embeddings_use_only_sub_windows_held_alone() -> None:
    starts, scores, emb, subs, slots = _synthetic(with_slots=True)
    activity = binarize(scores, 0.5, 0.5)
    units = unit_embeddings(starts, activity, GRID, emb, subs, min_exclusive=0.6)
    assert units.shape == (len(starts), 3, 64)
    valid = ~np.isnan(units[..., 0])
    np.testing.assert_allclose(np.linalg.norm(units[valid], axis=1), 1.0)
    voices: dict[int, list[np.ndarray]] = {0: [], 1: [], 2: []}
    for w, t0 in enumerate(starts):
        inside = [(a, b) for a, b in subs if a >= t0 and b <= t0 + GRID.window_s]
        for g, who in enumerate("ABC"):
            best = max(_alone_share(who, a, b) for a, b in inside)
            if best >= 0.7:
                assert valid[w, slots[w, g]], (t0, who, best)
            elif best <= 0.5:
                assert not valid[w, slots[w, g]], (t0, who, best)
            if valid[w, slots[w, g]]:
                voices[g].append(units[w, slots[w, g]])
    # every unit is its own speaker's voice, untainted by the one it overlaps with
    for g, h in itertools.combinations_with_replacement(range(3), 2):
        sim = np.stack(voices[g]) @ np.stack(voices[h]).T
        assert (sim > 0.9).all() if g == h else (sim < 0.5).all(), (g, h)
    # window 2-7 s: B only talks over A, so B has no embedding there
    assert not valid[2, slots[2, 1]] and valid[2, slots[2, 0]]
    # no sub-windows: nothing to embed
    none = unit_embeddings(starts, activity, GRID, np.zeros((0, 64)), np.zeros((0, 2)), 0.6)
    assert np.isnan(none).all()


def test_speech_regions_cover_the_active_stretches() -> None:
    starts, scores, _, _ = _synthetic()
    regions = speech_regions(list(starts), binarize(scores, 0.5, 0.5), GRID)
    expected = [(1.0, 12.0), (13.0, 17.0), (17.5, 19.5)]
    assert len(regions) == len(expected)
    for (a, b), (ga, gb) in zip(expected, regions, strict=True):
        assert abs(ga - a) < 0.1 and abs(gb - b) < 0.1
    assert speech_regions([], np.zeros((0, GRID.frames, 3), bool), GRID) == []


# -- SpeakerCount -----------------------------------------------------------------------


def test_speaker_count_validation() -> None:
    assert SpeakerCount(num=2, min=1, max=3).upper == 2
    assert SpeakerCount(min=2, max=4).upper == 4
    assert not SpeakerCount().given
    with pytest.raises(ValueError, match="must not be larger"):
        SpeakerCount(min=3, max=2)
    for bad in ({"num": 0}, {"min": 0}, {"max": 0}, {"num": -1}):
        with pytest.raises(ValueError, match="between 1 and"):
            SpeakerCount(**bad)
    with pytest.raises(ValueError, match="between 1 and"):
        SpeakerCount(num=MAX_SPEAKERS + 1)
    assert SpeakerCount(max=MAX_SPEAKERS).upper == MAX_SPEAKERS
    with pytest.raises(ValueError, match="outside"):
        SpeakerCount(num=5, max=3)
    with pytest.raises(ValueError, match="outside"):
        SpeakerCount(num=1, min=2)


# -- changes of voice the segmentation missed -------------------------------------------


def _one_slot_across_a_change(change: float = 10.0, seed: int = 0, noise: float = 0.15):
    """One local speaker held from 1 s to 19 s in every window (the segmentation missed
    the change), voice A before ``change`` and B after it; CAM++-like sub-windows of
    1.5 s every 1 s, each the mix of the voices it holds, plus noise."""
    rng = np.random.default_rng(seed)
    starts = np.arange(0.0, 15.0 + 1e-9, 1.0)
    scores = np.full((len(starts), GRID.frames, 3), 0.05)
    for w, t0 in enumerate(starts):
        centres = GRID.centres(float(t0))
        scores[w, (centres >= 1.0) & (centres < 19.0), 0] = 0.9
    a, b = _unit(rng.normal(size=(2, 64)))
    subs = np.array([(s, s + 1.5) for s in np.arange(1.0, 17.5 + 1e-9, 1.0)])
    share_a = np.clip((change - subs[:, 0]) / 1.5, 0.0, 1.0)
    mixed = share_a[:, None] * a + (1 - share_a)[:, None] * b
    emb = _unit(mixed + rng.normal(scale=noise, size=mixed.shape))
    return starts, scores, emb, subs


def test_change_points_find_the_change_of_voice() -> None:
    _, _, emb, subs = _one_slot_across_a_change(change=10.0)
    found = change_points(emb, subs, distance=0.85)
    assert len(found) == 1 and abs(found[0] - 10.0) <= 1.0, found
    # the order sub-windows come in does not matter
    order = np.random.default_rng(1).permutation(len(subs))
    np.testing.assert_allclose(change_points(emb[order], subs[order], distance=0.85), found)
    # off, or too few sub-windows to compare two runs
    assert len(change_points(emb, subs, distance=0.0)) == 0
    assert len(change_points(emb[:4], subs[:4], distance=0.85)) == 0


def test_change_points_stay_quiet_on_one_voice_and_across_long_pauses() -> None:
    _, _, emb, subs = _one_slot_across_a_change(change=30.0)  # A throughout
    assert len(change_points(emb, subs, distance=0.85)) == 0
    # A, then a 10 s pause, then B: runs that straddle the pause are not compared
    _, _, emb, subs = _one_slot_across_a_change(change=10.0)
    later = subs[:, 0] >= 10.0
    subs = subs + np.where(later, 10.0, 0.0)[:, None]
    assert len(change_points(emb, subs, distance=0.85)) == 0
    assert len(change_points(emb, subs, distance=0.85, max_span_s=20.0)) == 1


def test_unit_points_split_a_unit_held_across_a_change() -> None:
    starts, scores, emb, subs = _one_slot_across_a_change(change=10.0)
    activity = binarize(scores, 0.5, 0.5)
    units = unit_embeddings(starts, activity, GRID, emb, subs, 0.6)
    # without changes: the valid units, in order
    points, windows, ids = unit_points(starts, activity, GRID, emb, subs, 0.6)
    valid = ~np.isnan(units[..., 0])
    np.testing.assert_allclose(points, units[valid])
    np.testing.assert_array_equal(windows, np.nonzero(valid)[0])
    np.testing.assert_array_equal(ids, np.flatnonzero(valid.reshape(-1)))
    # the window 8-13 s holds sub-windows starting at 8, 9, 10 and 11 s; a change at
    # 10.5 s leaves [10, 11.5] out (it reaches 0.5 s past the change on both sides) and
    # splits the rest into {8, 9} and {11}
    points, windows, ids = unit_points(starts, activity, GRID, emb, subs, 0.6, [10.5])
    w = int(np.flatnonzero(starts == 8.0)[0])
    mine = np.flatnonzero(windows == w)
    assert len(mine) == 2 and ids[mine[0]] == ids[mine[1]] == w * 3
    before = _unit(emb[(subs[:, 0] >= 8.0) & (subs[:, 0] <= 9.0)].sum(axis=0))
    np.testing.assert_allclose(points[mine[0]], before)
    np.testing.assert_allclose(points[mine[1]], emb[subs[:, 0] == 11.0][0])
    # only the windows holding sub-windows wholly on both sides are split
    split = sorted(float(starts[v]) for v in set(windows) if (windows == v).sum() == 2)
    assert split == [8.0, 9.0]
    assert len(points) == int(valid.sum()) + 2


def test_sides_of_one_unit_may_share_a_speaker() -> None:
    x = _unit(np.array([[1.0, 0.0, 0.0], [0.9, 0.3, 0.0]]))  # 0.05 apart
    same_window = np.array([0, 0])
    assert constrained_average_linkage(x, same_window, same_voice=0.0) == []
    merges = constrained_average_linkage(x, same_window, same_voice=0.0, units=np.array([7, 7]))
    assert [(i, j) for i, j, _ in merges] == [(0, 1)]
    # a point of another unit in the window stays apart from both sides
    x3 = _unit(np.vstack([x, [0.95, 0.2, 0.05]]))
    merges = constrained_average_linkage(x3, np.zeros(3), same_voice=0.0, units=np.array([7, 7, 8]))
    assert [(i, j) for i, j, _ in merges] == [(0, 1)]


def test_diarize_segmentation_follows_a_change_the_segmentation_missed() -> None:
    blind = OverlapDiarizationOptions(threshold=0.95)
    seeing = OverlapDiarizationOptions(threshold=0.95, change_distance=0.85)
    for seed in (1, 2, 3, 4):
        starts, scores, emb, subs = _one_slot_across_a_change(change=10.0, seed=seed)
        # units held across the change mix the voices and bridge them: one speaker
        merged = diarize_segmentation(starts, scores, GRID, emb, subs, 20.0, blind)
        assert len({t.speaker for t in merged}) == 1, seed
        turns = diarize_segmentation(starts, scores, GRID, emb, subs, 20.0, seeing)
        assert len({t.speaker for t in turns}) == 2, seed
        first, second = turns[0].speaker, turns[-1].speaker
        assert _active(turns, 3.0) == {first} and _active(turns, 17.0) == {second}, seed
