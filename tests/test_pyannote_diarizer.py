"""The pyannote backend's real loading and inference paths, on a tiny random pipeline
directory built on disk (its speakers mean nothing; shapes and naming are checked)."""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
from speech import two_speaker_conversation
from tiny_pyannote import EMBEDDING_DIM, build_tiny_pyannote

from ethostral_serve.backends.diarization.pyannote import (
    MAX_EMBED_S,
    PyannoteDiarizer,
    exclusive_turns,
)
from ethostral_serve.engine import load_diarizer
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import Span
from ethostral_serve.settings import (
    CAMPLUS_SPEAKER_THRESHOLD,
    EMBEDDED_SPEAKER_THRESHOLD,
    PYANNOTE_SPEAKER_THRESHOLD,
    Settings,
    stream_speaker_threshold,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory) -> Path:
    return build_tiny_pyannote(tmp_path_factory.mktemp("pyannote"))


def _settings(path: Path) -> Settings:
    return Settings(diarizer={"backend": "pyannote", "pyannote_pipeline": str(path)})


def test_settings_select_the_pyannote_backend_and_it_diarizes_in_memory_audio(
    pipeline_dir,
) -> None:
    diarizer = load_diarizer(_settings(pipeline_dir))
    assert isinstance(diarizer, PyannoteDiarizer)
    assert os.environ["PYANNOTE_METRICS_ENABLED"] == "0"  # telemetry off
    talk = two_speaker_conversation(turns_each=1)
    duration = len(talk.samples) / 16000
    turns = diarizer.diarize(talk.samples, [Span(0.0, duration)])
    assert turns
    starts = [t.start for t in turns]
    assert starts == sorted(starts)
    for a, b in pairwise(turns):
        assert a.end <= b.start + 1e-6  # exclusive: one speaker at a time
    assert all(0.0 <= t.start < t.end <= duration for t in turns)
    seen: list[str] = []
    for t in turns:
        if t.speaker not in seen:
            seen.append(t.speaker)
    assert seen == [f"s{i}" for i in range(len(seen))]  # named in order of appearance
    assert diarizer.diarize(talk.samples, []) == []


def test_exclusive_turns_rename_speakers_by_first_appearance() -> None:
    from pyannote.core import Annotation, Segment

    annotation = Annotation()
    annotation[Segment(3.0, 4.0)] = "SPEAKER_00"
    annotation[Segment(0.5, 2.0)] = "SPEAKER_07"
    annotation[Segment(5.0, 6.5)] = "SPEAKER_07"
    annotation[Segment(6.9, 7.2)] = "SPEAKER_03"  # past the end of 6.8 s of audio
    turns = exclusive_turns(annotation, duration=6.8)
    assert [(t.start, t.end, t.speaker) for t in turns] == [
        (0.5, 2.0, "s0"),
        (3.0, 4.0, "s1"),
        (5.0, 6.5, "s0"),
    ]
    assert exclusive_turns(annotation)[-1].speaker == "s2"  # no duration: nothing clipped


def test_a_missing_pipeline_is_a_clear_load_error(tmp_path) -> None:
    with pytest.raises(ModelLoadError, match="pyannote pipeline"):
        load_diarizer(_settings(tmp_path / "nowhere"))


@pytest.fixture(scope="module")
def diarizer(pipeline_dir) -> PyannoteDiarizer:
    loaded = load_diarizer(_settings(pipeline_dir))
    assert isinstance(loaded, PyannoteDiarizer)
    return loaded


def _two_utterances() -> tuple[np.ndarray, np.ndarray]:
    """About 2 s of each speaker of the LibriSpeech conversation."""
    talk = two_speaker_conversation(turns_each=1)
    (a0, _, _), (b0, _, _) = talk.truth
    a, b = round(a0 * 16000), round(b0 * 16000)
    return talk.samples[a : a + 32000], talk.samples[b : b + 32000]


def test_embed_utterance_is_a_deterministic_unit_vector_per_utterance(diarizer) -> None:
    a, b = _two_utterances()
    ea = diarizer.embed_utterance(a)
    assert ea is not None
    assert ea.dtype == np.float32
    assert ea.shape == (EMBEDDING_DIM,)
    assert np.all(np.isfinite(ea))
    assert abs(float(np.linalg.norm(ea)) - 1.0) < 1e-5
    again = diarizer.embed_utterance(a.copy())
    assert again is not None
    np.testing.assert_allclose(again, ea, atol=1e-6)  # same utterance, same embedding
    eb = diarizer.embed_utterance(b)
    assert eb is not None
    assert not np.allclose(ea, eb, atol=1e-3)  # another utterance, another embedding


def test_embed_utterance_of_too_short_or_silent_audio_is_none(diarizer) -> None:
    a, _ = _two_utterances()
    assert diarizer.embed_utterance(a[:4000]) is None  # 0.25 s
    assert diarizer.embed_utterance(np.zeros(0, np.float32)) is None
    nan = a.copy()
    nan[100] = np.nan
    assert diarizer.embed_utterance(nan) is None  # not finite


def test_embed_utterance_uses_the_first_max_embed_s_of_long_audio(diarizer) -> None:
    talk = two_speaker_conversation(turns_each=2)
    cap = round(MAX_EMBED_S * 16000)
    long = np.resize(talk.samples, cap + 5 * 16000)  # the conversation repeated past the cap
    capped = diarizer.embed_utterance(long)
    assert capped is not None
    np.testing.assert_allclose(capped, diarizer.embed_utterance(long[:cap]), atol=1e-6)


def test_a_pipeline_without_an_embedding_model_embeds_nothing(diarizer) -> None:
    bare = object.__new__(PyannoteDiarizer)
    bare.settings = diarizer.settings
    bare.pipeline = object()  # e.g. oracle clustering: no ``_embedding``
    a, _ = _two_utterances()
    assert bare.embed_utterance(a) is None


def test_stream_speaker_threshold_is_explicit_or_the_diarizer_backends_default() -> None:
    assert Settings().stream.speaker_threshold is None
    assert stream_speaker_threshold(Settings()) == CAMPLUS_SPEAKER_THRESHOLD == 0.6
    for resemblyzer in (
        Settings(diarizer={"speaker_encoder": "resemblyzer"}),
        Settings(diarizer={"backend": "resemblyzer"}),
    ):
        assert stream_speaker_threshold(resemblyzer) == EMBEDDED_SPEAKER_THRESHOLD == 0.22
    pyannote = Settings(diarizer={"backend": "pyannote"})
    assert stream_speaker_threshold(pyannote) == PYANNOTE_SPEAKER_THRESHOLD == 0.25
    for backend in ("embedded", "pyannote"):
        explicit = Settings(diarizer={"backend": backend}, stream={"speaker_threshold": 0.4})
        assert stream_speaker_threshold(explicit) == 0.4


def test_the_stream_speaker_threshold_comes_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv("ETHOSTRAL_DIARIZER__BACKEND", "pyannote")
    assert stream_speaker_threshold(Settings()) == PYANNOTE_SPEAKER_THRESHOLD
    monkeypatch.setenv("ETHOSTRAL_STREAM__SPEAKER_THRESHOLD", "0.3")
    assert stream_speaker_threshold(Settings()) == 0.3
