"""A live stream's language: its finals' languages pooled until the leader is sure.
Fake backends isolate the rule from the models: each final is heard as scripted."""

from __future__ import annotations

from typing import Any

import numpy as np

from ethostral_serve.pipeline.live_stream import LiveStream, StreamParams
from ethostral_serve.pipeline.streaming import Due
from ethostral_serve.pipeline.types import UtteranceResult, WordTiming
from ethostral_serve.settings import Settings

Ranking = tuple[tuple[str, float], ...]


class _Backends:
    """Finals heard as ``heard`` scripts them, one ranking per call; records the
    language each call was given."""

    def __init__(self, heard: list[Ranking]) -> None:
        self.heard = list(heard)
        self.given: list[str | None] = []

    def new_vad_state(self) -> None:
        return None

    def finals(
        self,
        utterances: list[np.ndarray],
        language: str | None,
        emotion: bool,
        adapter: str | None = None,
    ) -> list[UtteranceResult]:
        self.given.append(language)
        ranking = self.heard.pop(0) if language is None else ()
        code = language or (ranking[0][0] if ranking else "und")
        return [
            UtteranceResult([WordTiming(" word", 0.0, 0.5, 0.9)], code, None, ranking)
            for _ in utterances
        ]

    def embed(self, audio: np.ndarray) -> None:
        return None


def _stream(heard: list[Ranking], language: str | None = None) -> tuple[LiveStream, _Backends]:
    backends = _Backends(heard)
    params = StreamParams(emotion=False, diarize=False, language=language)
    live = LiveStream(params, backends, Settings(), language=language)  # type: ignore[arg-type]
    return live, backends


def _final(live: LiveStream, index: int, seconds: float = 10.0) -> dict[str, Any]:
    start = 20.0 * index
    audio = np.zeros(round(seconds * 16000), np.float32)
    (event,) = live.final_events([Due("final", index, start, start + seconds, audio)])
    return event


def test_a_first_final_heard_unsure_does_not_decide_the_stream() -> None:
    # far-field English: the first final is heard as Welsh 0.55, the next as English
    live, backends = _stream([(("cy", 0.55), ("en", 0.43)), (("en", 0.95), ("cy", 0.03))])
    _final(live, 0, seconds=10.0)
    assert live.language is None  # 0.55 is unsure
    _final(live, 1, seconds=20.0)
    # pooled by seconds: English (0.43 * 10 + 0.95 * 20) / 30 = 0.78, sure
    assert live.language == "en"
    _final(live, 2)
    assert backends.given == [None, None, "en"]
    assert live.session().language == "en"


def test_a_sure_first_final_decides_at_once() -> None:
    live, backends = _stream([(("de", 0.97), ("en", 0.01))])
    _final(live, 0)
    _final(live, 1)
    assert live.language == "de" and backends.given == [None, "de"]


def test_the_vote_ends_after_its_windows_even_when_unsure() -> None:
    unsure = (("cy", 0.5), ("en", 0.45))
    live, backends = _stream([unsure] * 6)
    for i in range(6):
        _final(live, i)
    assert live.language == "cy"  # six finals had words: the leader so far
    _final(live, 6)
    assert backends.given[-1] == "cy"


def test_a_stream_that_ends_undecided_stores_the_leader_so_far() -> None:
    live, _ = _stream([(("en", 0.5), ("cy", 0.4))])
    _final(live, 0)
    assert live.language is None and live.session().language == "en"


def test_a_model_that_reports_no_ranking_decides_on_its_first_final() -> None:
    live, backends = _stream([()])
    backends.heard = []

    def without_ranking(utterances, language, emotion, adapter=None):
        backends.given.append(language)
        word = [WordTiming(" mot", 0.0, 0.5, 0.9)]
        return [UtteranceResult(word, language or "fr", None) for _ in utterances]

    backends.finals = without_ranking  # type: ignore[method-assign]
    _final(live, 0)
    _final(live, 1)
    assert live.language == "fr" and backends.given == [None, "fr"]


def test_a_given_language_is_never_voted_on() -> None:
    live, backends = _stream([], language="en")
    _final(live, 0)
    assert backends.given == ["en"] and live.session().language == "en"
