"""Finished utterances read together as one ASR window, then split back per utterance."""

from __future__ import annotations

import numpy as np
import pytest

from ethostral_serve.backends.stream import join_utterances, parts_results, split_window
from ethostral_serve.pipeline.types import (
    EmotionInput,
    EmotionResult,
    TimedEmotion,
    WindowResult,
    WordTiming,
)


def _window(words: list[tuple[str, float, float]], seconds: float) -> WindowResult:
    frames = np.arange(round(seconds / 0.02), dtype=np.float16)[:, None].repeat(3, axis=1)
    return WindowResult([WordTiming(t, s, e, 0.9) for t, s, e in words], "en", 0.9, frames)


def test_words_go_to_the_utterance_holding_their_midpoint_with_its_own_times() -> None:
    # utterances of 2.0 s and 1.5 s back to back; a word straddles the joint at 2.0 s
    result = _window([(" a", 0.2, 0.6), (" b", 1.7, 2.1), (" c", 1.95, 2.5), (" d", 3.0, 3.6)], 3.5)
    first, second = split_window(result, [32000, 24000])
    assert [w.text for w in first.words] == [" a", " b"]  # b's midpoint 1.9 s
    assert [w.text for w in second.words] == [" c", " d"]  # c's midpoint 2.225 s
    assert second.words[0].start == pytest.approx(0.0)  # clipped at the utterance start
    assert second.words[1].start == pytest.approx(1.0)
    assert second.words[1].end == pytest.approx(1.5)  # clipped at the utterance end
    assert first.words[0].start == pytest.approx(0.2)
    # encoder frames (20 ms each) are cut at the joint: frame values are their indices
    assert len(first.frames) == 100 and first.frames[0, 0] == 0
    assert len(second.frames) == 75 and second.frames[0, 0] == 100


def test_words_past_the_last_utterance_stay_with_it_inside_its_bounds() -> None:
    (only,) = split_window(_window([(" x", 0.1, 0.3), (" y", 1.05, 1.4)], 1.5), [16000])
    assert [w.text for w in only.words] == [" x", " y"]
    assert only.words[1].start == pytest.approx(1.0) and only.words[1].end == pytest.approx(1.0)


def test_frames_split_exactly_at_utterance_edges_that_are_not_round_seconds() -> None:
    # 0.3 s = 4800 samples = exactly 15 frames (0.3 / 0.02 is 14.999... in floats)
    parts = split_window(_window([], 0.9), [4800, 4800, 4800])
    assert [len(p.frames) for p in parts] == [15, 15, 15]
    assert [int(p.frames[0, 0]) for p in parts] == [0, 15, 30]


def _parts(result, utterances):
    return split_window(result, [len(u) for u in utterances])


def test_parts_results_classify_each_utterance_from_its_own_frames() -> None:
    seen: list[EmotionInput] = []

    def classify(inputs: list[EmotionInput]) -> list[EmotionResult]:
        seen.extend(inputs)
        return [EmotionResult("Calm", 0.5, 0.1, 0.0, 0.0) for _ in inputs]

    utterances = [np.zeros(16000, np.float32), np.ones(8000, np.float32)]
    window = join_utterances(utterances)
    assert len(window) == 24000 and window[16000] == 1.0
    result = _window([(" one", 0.2, 0.5), (" two", 1.1, 1.4)], 1.5)
    out = parts_results(_parts(result, utterances), utterances, True, classify)
    assert [r.text for r in out] == ["one", "two"]
    assert [len(x.frames) for x in seen] == [50, 25]
    assert all(r.emotion is not None and r.emotion.label == "Calm" for r in out)
    # without classify: no emotion, and audio is never read
    assert all(
        r.emotion is None for r in parts_results(_parts(result, utterances), utterances, True, None)
    )


def test_join_utterances_stops_at_thirty_seconds() -> None:
    assert len(join_utterances([np.zeros(20 * 16000), np.zeros(20 * 16000)])) == 30 * 16000


def test_inline_emotions_go_to_the_utterance_they_were_written_in() -> None:
    angry = EmotionResult("Angry", 0.9, -0.4, 0.7, 0.3)
    sad = EmotionResult("Sad", 0.8, -0.6, -0.3, -0.3)
    result = _window([(" a", 0.2, 0.6), (" b", 2.2, 2.6)], 3.5)
    result.emotions = [TimedEmotion(0.1, angry, 3.5), TimedEmotion(2.5, sad, 3.5)]
    first, second = split_window(result, [32000, 24000])
    assert first.emotions == [TimedEmotion(0.1, angry, 2.0)]  # held to its utterance's end
    assert second.emotions == [TimedEmotion(0.5, sad, 1.5)]
    calls: list[int] = []

    def classify(inputs: list[EmotionInput]) -> list[EmotionResult]:
        calls.append(len(inputs))
        return [EmotionResult("Calm", 0.5, 0.1, 0.0, 0.0) for _ in inputs]

    utterances = [np.zeros(32000, np.float32), np.zeros(24000, np.float32)]
    out = parts_results(_parts(result, utterances), utterances, True, classify)
    assert [r.emotion for r in out] == [angry, sad] and calls == []  # no classifier call
    assert all(
        r.emotion is None
        for r in parts_results(_parts(result, utterances), utterances, True, None, False)
    )
