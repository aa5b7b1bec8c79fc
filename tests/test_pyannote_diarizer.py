"""The pyannote backend's real loading and inference paths, on a tiny random pipeline
directory built on disk (its speakers mean nothing; shapes and naming are checked)."""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path

import pytest
from speech import two_speaker_conversation
from tiny_pyannote import build_tiny_pyannote

from ethostral_serve.backends.pyannote_diarizer import PyannoteDiarizer, exclusive_turns
from ethostral_serve.engine import load_diarizer
from ethostral_serve.errors import ModelLoadError
from ethostral_serve.pipeline.types import Span
from ethostral_serve.settings import Settings

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
