"""SRT and WebVTT renderings."""

from __future__ import annotations

from ethostral_serve.schema import Emotion, Segment, Session
from ethostral_serve.subtitles import to_srt, to_vtt


def _session() -> Session:
    emo = Emotion(label="Happy", valence=0.8, arousal=0.5, dominance=0.4, confidence=0.7)
    return Session(
        filename="a.wav",
        language="en",
        duration_ms=4_000_000,
        segments=[
            Segment(
                speaker="s0", start_ms=1_234, end_ms=5_678, text="Hi <there> & you", emotion=emo
            ),
            Segment(speaker="s1", start_ms=3_723_004, end_ms=3_725_000, text="Bye", emotion=None),
        ],
    )


def test_srt_numbers_cues_and_uses_comma_milliseconds() -> None:
    srt = to_srt(_session())
    assert srt.startswith("1\n00:00:01,234 --> 00:00:05,678\n[s0] Hi <there> & you\n")
    assert "2\n01:02:03,004 --> 01:02:05,000\n[s1] Bye\n" in srt


def test_vtt_has_header_voices_escaping_and_emotion_notes() -> None:
    vtt = to_vtt(_session())
    assert vtt.startswith("WEBVTT\n")
    assert "00:00:01.234 --> 00:00:05.678\n<v s0>Hi &lt;there&gt; &amp; you" in vtt
    assert "NOTE s0 Happy confidence=0.70" in vtt
    assert "01:02:03.004 --> 01:02:05.000\n<v s1>Bye" in vtt
