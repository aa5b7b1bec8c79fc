"""Stream endpointing, partial scheduling and online speaker ids on synthetic input."""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest

from ethostral_serve.pipeline.streaming import (
    VAD_FRAME,
    Due,
    OnlineSpeakers,
    StreamOptions,
    StreamTracker,
    take_window,
)

FRAME_S = VAD_FRAME / 16000


def _feed(tracker: StreamTracker, pattern: list[tuple[float, float]], chunk: int = 1600):
    """Feed (probability, seconds) runs in ``chunk``-sample pieces; collect what is due."""
    probs = np.concatenate([np.full(round(s / FRAME_S), p) for p, s in pattern])
    audio = np.arange(len(probs) * VAD_FRAME, dtype=np.float32)  # sample i holds i
    due, given = [], 0
    for i in range(0, len(audio), chunk):
        piece = audio[i : i + chunk]
        frames = (i + len(piece)) // VAD_FRAME - given
        due += tracker.push(piece, probs[given : given + frames])
        given += frames
    return due


def test_one_utterance_gives_partials_then_one_final() -> None:
    tracker = StreamTracker(StreamOptions(pad_s=0.0))
    due = _feed(tracker, [(0.0, 1.0), (0.9, 2.0), (0.0, 1.0)])
    partials = [d for d in due if d.kind == "partial"]
    finals = [d for d in due if d.kind == "final"]
    assert len(finals) == 1
    f = finals[0]
    assert f.start == pytest.approx(1.0, abs=FRAME_S) and f.end == pytest.approx(3.0, abs=FRAME_S)
    # the audio is exactly the stream's samples between start and end
    assert f.audio[0] == round(f.start * 16000) and len(f.audio) == round((f.end - f.start) * 16000)
    # a partial after every 0.3 s of new speech, all before the final
    assert 5 <= len(partials) <= 7
    assert all(p.utterance == f.utterance == 0 for p in partials)
    gaps = np.diff([p.end for p in partials])
    assert np.all(gaps >= 0.3 - 1e-9)
    assert due.index(f) == len(due) - 1
    assert all(p.end <= f.end for p in partials)  # no partials over the closing silence


def test_short_pause_does_not_end_an_utterance_but_a_long_one_does() -> None:
    tracker = StreamTracker(StreamOptions(end_silence_s=0.6))
    due = _feed(tracker, [(0.9, 1.0), (0.1, 0.3), (0.9, 1.0), (0.1, 0.8), (0.9, 1.0), (0.1, 1.0)])
    finals = [d for d in due if d.kind == "final"]
    assert [f.utterance for f in finals] == [0, 1]
    assert finals[0].end == pytest.approx(2.3 + 0.1, abs=2 * FRAME_S)  # speech end + padding


def test_hysteresis_keeps_an_utterance_open_between_thresholds() -> None:
    tracker = StreamTracker(StreamOptions(threshold=0.5, end_threshold=0.35))
    due = _feed(tracker, [(0.9, 0.5), (0.4, 2.0), (0.0, 1.0)])
    (final,) = [d for d in due if d.kind == "final"]
    assert final.end - final.start > 2.4


def test_maximum_length_cuts_long_speech_into_several_finals() -> None:
    tracker = StreamTracker(StreamOptions(max_utterance_s=2.0))
    due = _feed(tracker, [(0.9, 5.0), (0.0, 1.0)])
    finals = [d for d in due if d.kind == "final"]
    assert len(finals) == 3
    assert all(f.end - f.start <= 2.0 + FRAME_S for f in finals)
    assert finals[1].start == pytest.approx(finals[0].end)  # no speech lost at a cut


def test_blips_shorter_than_min_speech_are_dropped() -> None:
    tracker = StreamTracker(StreamOptions(min_speech_s=0.25))
    due = _feed(tracker, [(0.0, 0.5), (0.9, 0.1), (0.0, 1.0)])
    assert due == []


def test_finish_finalises_the_open_utterance() -> None:
    tracker = StreamTracker()
    due = _feed(tracker, [(0.0, 0.5), (0.9, 1.0)])
    assert not [d for d in due if d.kind == "final"]
    (final,) = tracker.finish()
    assert final.kind == "final" and final.end == pytest.approx(1.5, abs=FRAME_S)
    assert tracker.finish() == []


def test_memory_is_bounded_by_the_open_utterance() -> None:
    tracker = StreamTracker()
    _feed(tracker, [(0.0, 60.0)])
    assert tracker.total_samples == 60 * 16000
    assert sum(len(a) for a in tracker._audio) < 16000  # silence is not kept


def test_wrong_number_of_probabilities_is_refused() -> None:
    tracker = StreamTracker()
    with pytest.raises(ValueError, match="expected 3"):
        tracker.push(np.zeros(1600, np.float32), np.zeros(2))


def test_online_speakers_keep_ids_and_add_new_ones() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=256), rng.normal(size=256)
    speakers = OnlineSpeakers(threshold=0.3)
    seq = [a, b, a, a, b]
    ids = [speakers.assign(v + 0.1 * rng.normal(size=256)) for v in seq]
    assert ids == ["s0", "s1", "s0", "s0", "s1"]
    assert speakers.assign(None) == "s0"
    assert OnlineSpeakers(max_speakers=1).assign(b) == "s0"


def test_stream_options_are_checked() -> None:
    with pytest.raises(ValueError):
        StreamOptions(threshold=0.3, end_threshold=0.5)


def _due(utterance: int, seconds: float) -> Due:
    return Due("final", utterance, 0.0, seconds, np.zeros(round(seconds * 16000), np.float32))


def test_take_window_packs_queued_utterances_in_order_up_to_the_limit() -> None:
    queue = deque([_due(0, 10.0), _due(1, 12.0), _due(2, 9.0), _due(3, 1.0)])
    first = take_window(queue, 30 * 16000)
    assert [d.utterance for d in first] == [0, 1]  # 2 would make 31 s; 3 may not jump it
    assert [d.utterance for d in take_window(queue, 30 * 16000)] == [2, 3]
    assert not queue


def test_take_window_always_takes_the_first_utterance() -> None:
    queue = deque([_due(0, 40.0), _due(1, 1.0)])
    assert [d.utterance for d in take_window(queue, 30 * 16000)] == [0]
    assert [d.utterance for d in queue] == [1]
