"""Unit tests of the pure clustering code on synthetic embeddings (no model)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ethostral_serve.pipeline.clustering import (
    ClusteringOptions,
    cluster_embeddings,
    diarize_windows,
    windows_to_turns,
)
from ethostral_serve.pipeline.types import Span, SpeakerTurn

WINDOW, STEP = 1.0, 0.25


def _voices(n: int, dim: int = 32, seed: int = 0) -> np.ndarray:
    """``n`` random unit vectors, far apart in ``dim`` dimensions."""
    v = np.random.default_rng(seed).normal(size=(n, dim))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _conversation(
    plan: list[tuple[int, float]], noise: float = 0.05, seed: int = 1
) -> tuple[np.ndarray, np.ndarray, list[Span], list[int]]:
    """Windows over back-to-back turns ``(speaker, seconds)`` with a 0.5 s pause between.

    Returns embeddings, windows, speech regions and each window's true speaker.
    """
    rng = np.random.default_rng(seed)
    voices = _voices(max(s for s, _ in plan) + 1)
    emb, win, truth, regions = [], [], [], []
    t = 0.0
    for speaker, seconds in plan:
        regions.append(Span(t, t + seconds))
        start = t
        while start + WINDOW <= t + seconds + 1e-9:
            e = voices[speaker] + noise * rng.normal(size=voices.shape[1])
            emb.append(e / np.linalg.norm(e))
            win.append((start, start + WINDOW))
            truth.append(speaker)
            start += STEP
        t += seconds + 0.5
    return np.array(emb), np.array(win), regions, truth


def _assert_well_formed(turns: list[SpeakerTurn], regions: list[Span]) -> None:
    for a, b in itertools.pairwise(turns):
        assert a.start < a.end <= b.start
    for t in turns:
        assert any(r.start - 1e-9 <= t.start and t.end <= r.end + 1e-9 for r in regions)
    names = []
    for t in turns:
        if t.speaker not in names:
            names.append(t.speaker)
    assert names == [f"s{i}" for i in range(len(names))]


@pytest.mark.parametrize("n_speakers", [1, 2, 3, 5])
def test_finds_the_number_of_speakers(n_speakers: int) -> None:
    plan = [(i % n_speakers, 6.0) for i in range(2 * n_speakers + 1)]
    emb, win, _, truth = _conversation(plan)
    labels = cluster_embeddings(emb, win)
    assert len(set(labels.tolist())) == n_speakers
    # the partition matches the truth up to renaming
    pairs = set(zip(labels.tolist(), truth, strict=True))
    assert len(pairs) == n_speakers


def test_labels_follow_first_appearance() -> None:
    emb, win, _, truth = _conversation([(1, 5.0), (0, 5.0), (1, 5.0)])
    labels = cluster_embeddings(emb, win)
    assert labels[0] == 0
    assert labels[-1] == 0
    assert set(labels.tolist()) == {0, 1}
    assert truth[0] == 1  # speaker 1 spoke first, so it became label 0


def test_turns_are_sorted_named_and_inside_regions() -> None:
    emb, win, regions, _ = _conversation([(2, 4.0), (0, 6.0), (1, 3.0), (2, 5.0), (0, 4.0)])
    turns = diarize_windows(emb, win, regions)
    _assert_well_formed(turns, regions)
    assert [t.speaker for t in turns] == ["s0", "s1", "s2", "s0", "s1"]
    for turn, region in zip(turns, regions, strict=True):
        assert turn.start == pytest.approx(region.start)
        assert turn.end == pytest.approx(region.end)


def test_speaker_change_inside_one_region_is_found_near_the_change() -> None:
    emb, win, _, _ = _conversation([(0, 6.0), (1, 6.0)])
    # the 0.5 s pause is not a region boundary here: one region covers both turns
    region = [Span(0.0, 12.5)]
    turns = diarize_windows(emb, win, region)
    assert [t.speaker for t in turns] == ["s0", "s1"]
    assert turns[0].end == pytest.approx(6.25, abs=0.3)
    _assert_well_formed(turns, region)


def test_noise_alone_is_one_speaker() -> None:
    emb, win, regions, _ = _conversation([(0, 40.0)], noise=0.1)
    assert set(cluster_embeddings(emb, win).tolist()) == {0}
    turns = diarize_windows(emb, win, regions)
    assert {t.speaker for t in turns} == {"s0"}


def test_min_and_max_speakers_are_respected() -> None:
    emb, win, _, _ = _conversation([(0, 30.0)], noise=0.1)
    forced = cluster_embeddings(emb, win, ClusteringOptions(min_speakers=2))
    assert len(set(forced.tolist())) == 2

    emb, win, _, _ = _conversation([(0, 6.0), (1, 6.0), (2, 6.0), (3, 6.0)])
    capped = cluster_embeddings(emb, win, ClusteringOptions(max_speakers=2))
    assert len(set(capped.tolist())) <= 2


def test_a_voice_with_too_little_speech_is_not_a_speaker() -> None:
    # speaker 1 covers only ~1.5 s, below min_cluster_s
    emb, win, _, _ = _conversation([(0, 10.0), (1, 1.5), (0, 10.0)])
    labels = cluster_embeddings(emb, win, ClusteringOptions(min_cluster_s=3.0))
    assert set(labels.tolist()) == {0}


def test_empty_and_single_window() -> None:
    assert cluster_embeddings(np.zeros((0, 8))).shape == (0,)
    assert diarize_windows(np.zeros((0, 8)), np.zeros((0, 2)), [Span(0, 1)]) == []
    one = diarize_windows(_voices(1), np.array([[0.0, 1.0]]), [Span(0.0, 1.2)])
    assert one == [SpeakerTurn(0.0, 1.2, "s0")]
    assert windows_to_turns(np.array([[0.0, 1.0]]), np.ones((1, 1)), []) == []


def test_regions_without_windows_take_the_nearest_speaker() -> None:
    windows = np.array([[0.0, 1.0], [5.0, 6.0]])
    scores = np.eye(2)
    regions = [Span(0.0, 1.0), Span(1.5, 1.8), Span(4.4, 4.7), Span(5.0, 6.0)]
    turns = windows_to_turns(windows, scores, regions)
    assert [t.speaker for t in turns] == ["s0", "s0", "s1", "s1"]
    _assert_well_formed(turns, regions)


def test_short_runs_are_absorbed() -> None:
    # a 0.1 s run of speaker 1 between two long runs of speaker 0 inside one region
    windows = np.array([[0.0, 2.0], [2.0, 2.1], [2.1, 4.0]])
    scores = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    turns = windows_to_turns(windows, scores, [Span(0.0, 4.0)], ClusteringOptions(min_turn_s=0.3))
    assert turns == [SpeakerTurn(0.0, 4.0, "s0")]
    kept = windows_to_turns(windows, scores, [Span(0.0, 4.0)], ClusteringOptions(min_turn_s=0.0))
    assert [t.speaker for t in kept] == ["s0", "s1", "s0"]


def test_overlapping_regions_give_non_overlapping_turns() -> None:
    emb, win, _, _ = _conversation([(0, 5.0), (1, 5.0)])
    regions = [Span(0.0, 6.0), Span(4.0, 11.0)]
    turns = diarize_windows(emb, win, regions)
    for a, b in itertools.pairwise(turns):
        assert a.end <= b.start


def test_many_windows_use_a_subsample_and_stay_deterministic() -> None:
    emb, win, _, truth = _conversation([(0, 30.0), (1, 30.0), (0, 30.0)])
    opts = ClusteringOptions(max_fit_windows=50)
    a = cluster_embeddings(emb, win, opts)
    b = cluster_embeddings(emb, win, opts)
    assert np.array_equal(a, b)
    assert len(set(zip(a.tolist(), truth, strict=True))) == 2
