"""Subtitle renderings of a Session: SubRip (.srt) and WebVTT (.vtt)."""

from __future__ import annotations

from ethostral_serve.schema import Session


def _clock(ms: int, separator: str) -> str:
    hours, rest = divmod(max(0, ms), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    seconds, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{seconds:02d}{separator}{millis:03d}"


def to_srt(session: Session) -> str:
    """SubRip text; each cue starts with the speaker in brackets."""
    cues = []
    for i, seg in enumerate(session.segments, start=1):
        cues.append(
            f"{i}\n{_clock(seg.start_ms, ',')} --> {_clock(seg.end_ms, ',')}\n"
            f"[{seg.speaker}] {seg.text}\n"
        )
    return "\n".join(cues)


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(session: Session) -> str:
    """WebVTT text; speakers as voice spans (``<v s0>``), emotion as a cue note."""
    lines = ["WEBVTT", ""]
    for seg in session.segments:
        if seg.emotion is not None:
            e = seg.emotion
            lines.append(
                f"NOTE {seg.speaker} {e.label} confidence={e.confidence:.2f} "
                f"valence={e.valence:+.2f} arousal={e.arousal:+.2f} dominance={e.dominance:+.2f}"
            )
            lines.append("")
        lines.append(seg.id)
        lines.append(f"{_clock(seg.start_ms, '.')} --> {_clock(seg.end_ms, '.')}")
        lines.append(f"<v {seg.speaker}>{_vtt_escape(seg.text)}")
        lines.append("")
    return "\n".join(lines)
