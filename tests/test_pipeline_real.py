"""The whole pipeline on real recorded speech with the real embedded models."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from conftest import require_data

from ethostral_serve.audio import decode_audio
from ethostral_serve.errors import UnsupportedLanguageError
from ethostral_serve.pipeline.compose import TranscribeOptions, transcribe
from ethostral_serve.schema import EMOTION_LABELS, Session

pytestmark = pytest.mark.slow


def _wer(ref: str, hyp: str) -> float:
    import jiwer

    from benchmarks.common import normalise

    return float(jiwer.wer(normalise(ref), normalise(hyp)))


def _check_schema(session: Session, duration_ms: int) -> None:
    assert session.duration_ms == duration_ms
    previous_start = -1
    for seg in session.segments:
        assert seg.speaker.startswith("s") and seg.speaker[1:].isdigit()
        assert 0 <= seg.start_ms <= seg.end_ms <= duration_ms + 50
        assert seg.start_ms >= previous_start
        previous_start = seg.start_ms
        assert seg.text.strip()
        assert seg.emotion is not None
        assert seg.emotion.label in EMOTION_LABELS
        for v in (seg.emotion.valence, seg.emotion.arousal, seg.emotion.dominance):
            assert -1.0 <= v <= 1.0
        assert 0.0 <= seg.emotion.confidence <= 1.0
    speakers = [s.speaker for s in session.segments]
    first_seen = list(dict.fromkeys(speakers))
    assert first_seen == [f"s{i}" for i in range(len(first_seen))]


def test_jfk_44k_stereo_24bit(engine) -> None:
    folder = require_data("asr", "jfk")
    session = engine.run(folder / "jfk.flac", "jfk.flac", TranscribeOptions())
    assert session.language == "en"
    _check_schema(session, 11_000)
    text = " ".join(s.text for s in session.segments)
    assert _wer((folder / "jfk.txt").read_text(), text) < 0.1
    words = [w for s in session.segments for w in s.words]
    assert words and all(0 <= w.start_ms <= w.end_ms <= 11_050 for w in words)


def test_two_speaker_conversation(engine) -> None:
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    # Alternate a male and a female speaker, 3 utterances each, 0.8 s pauses.
    by_speaker: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    a = [r for r in by_speaker["1688"] if float(r["duration_s"]) < 9][:3]
    b = [r for r in by_speaker["2414"] if float(r["duration_s"]) < 9][:3]
    pause = np.zeros(int(0.8 * 16000), np.float32)
    parts, refs, truth = [pause], [], []
    t = len(pause) / 16000
    for ra, rb in zip(a, b, strict=True):
        for r, who in ((ra, "A"), (rb, "B")):
            x = decode_audio(root / r["path"]).samples
            truth.append((t, t + len(x) / 16000, who))
            parts += [x, pause]
            refs.append(r["transcript"])
            t += (len(x) + len(pause)) / 16000
    samples = np.concatenate(parts)
    from ethostral_serve.audio import Audio

    session = transcribe(
        Audio(samples),
        "conversation.wav",
        TranscribeOptions(language="en"),
        vad=engine.vad,
        diarizer=engine.diarizer,
        model=engine.model,
        settings=engine.settings,
    )
    _check_schema(session, round(1000 * len(samples) / 16000))
    assert len({s.speaker for s in session.segments}) >= 2
    assert _wer(" ".join(refs), " ".join(s.text for s in session.segments)) < 0.2
    # Most of the speech is attributed to one consistent label per true speaker.
    votes: dict[str, dict[str, float]] = {}
    for seg in session.segments:
        mid = (seg.start_ms + seg.end_ms) / 2000
        who = next((w for s, e, w in truth if s - 0.3 <= mid <= e + 0.3), None)
        if who:
            votes.setdefault(who, {}).setdefault(seg.speaker, 0.0)
            votes[who][seg.speaker] += (seg.end_ms - seg.start_ms) / 1000
    top = {who: max(v, key=v.get) for who, v in votes.items()}
    assert top["A"] != top["B"]
    agreement = sum(v[top[w]] for w, v in votes.items()) / sum(
        sum(v.values()) for v in votes.values()
    )
    assert agreement > 0.85


def test_no_emotion_and_no_diarize(engine) -> None:
    folder = require_data("asr", "jfk")
    session = engine.run(
        folder / "jfk.flac", "jfk.flac", TranscribeOptions(diarize=False, emotion=False)
    )
    assert session.segments
    assert {s.speaker for s in session.segments} == {"s0"}
    assert all(s.emotion is None for s in session.segments)


def test_unsupported_language_is_refused_before_work(engine) -> None:
    with pytest.raises(UnsupportedLanguageError, match="not supported"):
        engine.run(b"not even audio", "x.wav", TranscribeOptions(language="klingon"))


def test_silent_file_gives_no_segments(engine) -> None:
    folder = require_data("diarization", "pyannote-debug")
    session = engine.run(folder / "empty.wav", "empty.wav", TranscribeOptions())
    assert session.segments == []
    assert session.duration_ms > 0


def test_tiny_en_with_emotion_uses_a_separate_base_encoder(settings) -> None:
    from ethostral_serve.engine import Engine

    folder = require_data("asr", "jfk")
    tiny = settings.model_copy(update={"asr": settings.asr.model_copy(update={"model": "tiny.en"})})
    engine = Engine.load(tiny, diarize=False)
    assert engine.model.asr.multilingual is False
    assert engine.model._emotion_encoder is not None
    session = engine.run(folder / "jfk.flac", "jfk.flac", TranscribeOptions(diarize=False))
    assert session.language == "en"
    _check_schema(session, 11_000)
    assert _wer((folder / "jfk.txt").read_text(), " ".join(s.text for s in session.segments)) < 0.15
