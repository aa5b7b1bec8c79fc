"""The resemblyzer diarizer on real speech: a two-speaker LibriSpeech conversation."""

from __future__ import annotations

import csv
import itertools

import numpy as np
import pytest
from conftest import require_data

from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.pipeline.ports import DiarizerBackend
from ethostral_serve.pipeline.types import Span, SpeakerTurn
from ethostral_serve.settings import DiarizerSettings, Settings, VadSettings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def diarizer():
    """The embedded diarizer with default settings and the user's model cache."""
    from ethostral_serve.backends.diarization.resemblyzer import ResemblyzerDiarizer

    return ResemblyzerDiarizer(DiarizerSettings(), Settings().cache_dir)


@pytest.fixture(scope="module")
def vad():
    """The project's Silero VAD with default settings."""
    from ethostral_serve.backends.vad.silero import SileroVad

    return SileroVad(VadSettings())


def _conversation(
    seconds: float, seed: int = 7
) -> tuple[np.ndarray, list[tuple[float, float, str]]]:
    """Alternate utterances of two LibriSpeech speakers (one F, one M) with 0.3-1.5 s pauses."""
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    female = next(r["speaker"] for r in rows if r["sex"] == "F")
    male = next(r["speaker"] for r in rows if r["sex"] == "M")
    # shorter utterances first, so that the speakers change more often
    pools = {
        s: sorted((r for r in rows if r["speaker"] == s), key=lambda r: float(r["duration_s"]))
        for s in (female, male)
    }
    rng = np.random.default_rng(seed)
    parts: list[np.ndarray] = [np.zeros(SAMPLE_RATE // 2, np.float32)]
    reference: list[tuple[float, float, str]] = []
    t, turn = 0.5, 0
    while t < seconds and any(pools.values()):
        speaker = (female, male)[turn % 2]
        turn += 1
        if not pools[speaker]:
            continue
        row = pools[speaker].pop(0)
        audio = decode_audio(root / row["path"]).samples
        reference.append((t, t + len(audio) / SAMPLE_RATE, speaker))
        pause = np.zeros(int(rng.uniform(0.3, 1.5) * SAMPLE_RATE), np.float32)
        parts += [audio, pause]
        t += (len(audio) + len(pause)) / SAMPLE_RATE
    return np.concatenate(parts), reference


def _confusion(reference: list[tuple[float, float, str]], turns: list[SpeakerTurn]) -> float:
    """Speaker confusion (collar 0.25 s) as a fraction of reference speech."""
    metrics = pytest.importorskip("pyannote.metrics.diarization")
    from pyannote.core import Annotation, Segment, Timeline

    ref, hyp = Annotation(), Annotation()
    for i, (s, e, spk) in enumerate(reference):
        ref[Segment(s, e), i] = spk
    for i, t in enumerate(turns):
        hyp[Segment(t.start, t.end), i] = t.speaker
    end = max([e for _, e, _ in reference] + [t.end for t in turns])
    uem = Timeline([Segment(0.0, end)])
    detail = metrics.DiarizationErrorRate(collar=0.25)(ref, hyp, uem=uem, detailed=True)
    return float(detail["confusion"] / detail["total"])


def test_is_a_diarizer_backend(diarizer) -> None:
    assert isinstance(diarizer, DiarizerBackend)


def test_two_speaker_conversation(diarizer, vad) -> None:
    samples, reference = _conversation(45.0)
    regions = vad.speech_regions(samples)
    turns = diarizer.diarize(samples, regions)

    assert len({t.speaker for t in turns}) >= 2
    assert _confusion(reference, turns) < 0.15
    assert turns[0].speaker == "s0"
    for a, b in itertools.pairwise(turns):
        assert a.start < a.end <= b.start
    speech: list[list[float]] = []  # regions that touch form one stretch of speech
    for r in regions:
        if speech and r.start <= speech[-1][1] + 1e-6:
            speech[-1][1] = max(speech[-1][1], r.end)
        else:
            speech.append([r.start, r.end])
    for t in turns:
        assert any(s - 1e-6 <= t.start and t.end <= e + 1e-6 for s, e in speech)


def test_one_speaker_stays_one_speaker(diarizer, vad) -> None:
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    speaker = rows[0]["speaker"]
    gap = np.zeros(SAMPLE_RATE // 2, np.float32)
    parts = []
    for r in [r for r in rows if r["speaker"] == speaker][:4]:
        parts += [decode_audio(root / r["path"]).samples, gap]
    samples = np.concatenate(parts)
    turns = diarizer.diarize(samples, vad.speech_regions(samples))
    assert turns
    assert {t.speaker for t in turns} == {"s0"}


def test_no_speech_and_short_speech(diarizer) -> None:
    silence = np.zeros(3 * SAMPLE_RATE, np.float32)
    assert diarizer.diarize(silence, []) == []
    assert diarizer.diarize(np.zeros(0, np.float32), [Span(0.0, 1.0)]) == []
    noise = np.random.default_rng(0).normal(0, 0.05, 3 * SAMPLE_RATE).astype(np.float32)
    # speech too short to embed still gets a speaker
    tiny = diarizer.diarize(noise, [Span(0.5, 0.7), Span(1.0, 1.2)])
    assert tiny == [SpeakerTurn(0.5, 0.7, "s0"), SpeakerTurn(1.0, 1.2, "s0")]
    # one window's worth of audio: one speaker
    single = diarizer.diarize(noise, [Span(0.0, 1.1)])
    assert [t.speaker for t in single] == ["s0"]


def test_long_regions_get_resemblyzers_mel_in_blocks(diarizer) -> None:
    from resemblyzer import audio

    rng = np.random.default_rng(1)
    wav = rng.normal(0, 0.05, 65 * SAMPLE_RATE).astype(np.float32)
    blocked = diarizer._encoder.mel(wav)
    whole = audio.wav_to_mel_spectrogram(wav)
    assert blocked.shape == whole.shape
    np.testing.assert_allclose(blocked, whole, rtol=1e-4, atol=1e-6)
