"""Real recorded speech for tests: a two-speaker conversation built from LibriSpeech, and
a minute of a real far-field meeting."""

from __future__ import annotations

import csv
import io
import wave
from dataclasses import dataclass

import numpy as np
from conftest import require_data

from ethostral_serve.audio import SAMPLE_RATE, decode_audio


@dataclass
class Conversation:
    """Samples, the reference transcript and who spoke when (``A``/``B``)."""

    samples: np.ndarray
    reference: str
    truth: list[tuple[float, float, str]]

    @property
    def duration_ms(self) -> int:
        """Length in milliseconds."""
        return round(1000 * len(self.samples) / SAMPLE_RATE)

    def wav_bytes(self) -> bytes:
        """The conversation as a 16-bit PCM WAV file."""
        buf = io.BytesIO()
        with wave.open(buf, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes((np.clip(self.samples, -1, 1) * 32767).astype("<i2").tobytes())
        return buf.getvalue()


def two_speaker_conversation(turns_each: int = 3, max_utterance_s: float = 9.0) -> Conversation:
    """A male (1688) and a female (2414) LibriSpeech speaker alternating, 0.8 s pauses."""
    root = require_data("asr", "librispeech-test-other")
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    by_speaker: dict[str, list[dict[str, str]]] = {}
    for r in rows:
        by_speaker.setdefault(r["speaker"], []).append(r)
    a = [r for r in by_speaker["1688"] if float(r["duration_s"]) < max_utterance_s]
    b = [r for r in by_speaker["2414"] if float(r["duration_s"]) < max_utterance_s]
    pause = np.zeros(int(0.8 * SAMPLE_RATE), np.float32)
    parts, refs, truth = [pause], [], []
    t = len(pause) / SAMPLE_RATE
    for ra, rb in zip(a[:turns_each], b[:turns_each], strict=True):
        for r, who in ((ra, "A"), (rb, "B")):
            x = decode_audio(root / r["path"]).samples
            truth.append((t, t + len(x) / SAMPLE_RATE, who))
            parts += [x, pause]
            refs.append(r["transcript"])
            t += (len(x) + len(pause)) / SAMPLE_RATE
    return Conversation(np.concatenate(parts), " ".join(refs), truth)


def meeting_minute() -> tuple[np.ndarray, int]:
    """One minute of a real far-field AMI meeting and its number of speakers: two
    excerpts of the same meeting (pyannote-debug tst00 + tst01), four people who often
    talk at once. Streamed with live speakers only, its session holds one speaker."""
    folder = require_data("diarization", "pyannote-debug")
    names = ("tst00", "tst01")
    parts = [decode_audio(folder / f"{name}.wav").samples for name in names]
    speakers = set()
    for line in (folder / "debug.test.rttm").read_text().splitlines():
        f = line.split()
        if f and f[1] in names:
            speakers.add(f[7])
    return np.concatenate(parts), len(speakers)
