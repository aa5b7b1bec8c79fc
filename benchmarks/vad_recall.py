"""Does the VAD find the speech in every clip of acted emotional speech, and nothing in noise?

    .venv/bin/python -m benchmarks.vad_recall [--fallbacks 0.5 0.25 0.15] [--sound-seconds 5]

Runs Silero VAD (``SileroVad`` with the default settings but ``vad.fallback_threshold``)
over every RAVDESS and EmoDB clip in ../shared/data/emotion and counts the clips in which
it finds no speech region at all (each clip holds one spoken sentence), by corpus,
emotion and intensity; and over synthetic non-speech (silence, tones, white and pink
noise at four levels, a synthetic tune with and without drums; 5 s, or
``--sound-seconds``: past ``vad.restart_s`` the VAD's restarted reading counts too),
counting the sounds in which it finds speech, then runs the whole pipeline (default
settings) on each sound and prints what it transcribed. A fallback not below
``vad.threshold`` (0.5) is off.
"""

from __future__ import annotations

import argparse
import csv
from collections import Counter
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, machine, print_table
from benchmarks.serve_upload import wav_bytes
from ethostral_serve.audio import SAMPLE_RATE


def clips() -> list[tuple[str, str, Path]]:
    """(corpus, emotion/intensity, path) of every shared RAVDESS and EmoDB clip."""
    out = []
    for corpus, intensity in (("ravdess", "intensity"), ("emodb", None)):
        root = DATA / "emotion" / corpus
        with (root / "labels.tsv").open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh, delimiter="\t"):
                label = row["emotion"] + (f" ({row[intensity]})" if intensity else "")
                out.append((corpus, label, root / row["path"]))
    return out


def non_speech(seconds: float = 5.0, seed: int = 0) -> dict[str, np.ndarray]:
    """Sounds with no speech in them, at ``SAMPLE_RATE``."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    shaped = np.fft.rfft(rng.standard_normal(n)) / np.maximum(1.0, np.sqrt(np.arange(n // 2 + 1)))
    pink = np.fft.irfft(shaped, n)
    sounds = {"silence": np.zeros(n), "tone 440 Hz": 0.3 * np.sin(2 * np.pi * 440 * t)}
    sounds["chord"] = 0.1 * sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0))
    sounds["hum and clicks"] = 0.05 * np.sin(2 * np.pi * 50 * t) + 0.5 * (rng.random(n) > 0.999)
    # a tune: a note every 0.4 s, ten harmonics, 5 Hz vibrato, a decaying envelope
    pitch = 220.0 * 2 ** (rng.integers(0, 12, int(seconds / 0.4) + 1)[(t // 0.4).astype(int)] / 12)
    phase = 2 * np.pi * np.cumsum(pitch * (1 + 0.01 * np.sin(2 * np.pi * 5 * t))) / SAMPLE_RATE
    envelope = np.exp(-3 * (t % 0.4))
    sounds["tune"] = 0.2 * envelope * sum(np.sin(k * phase) / k for k in range(1, 11))
    beat = (t % 0.5 < 0.05) * rng.standard_normal(n) * np.exp(-60 * (t % 0.5))
    sounds["tune and drums"] = sounds["tune"] + 0.3 * beat
    for level in (0.001, 0.01, 0.05, 0.2):
        sounds[f"white noise {level}"] = level * rng.standard_normal(n)
        sounds[f"pink noise {level}"] = level * pink / pink.std()
    return {name: x.astype(np.float32) for name, x in sounds.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fallbacks", type=float, nargs="+", default=[0.5, 0.25, 0.15])
    parser.add_argument("--sound-seconds", type=float, default=5.0, help="non-speech length")
    args = parser.parse_args()

    from ethostral_serve.audio import decode_audio
    from ethostral_serve.backends.vad.silero import SileroVad
    from ethostral_serve.settings import Settings, VadSettings

    items = clips()
    audio = [decode_audio(path).samples for _, _, path in items]
    sounds = non_speech(args.sound_seconds)
    print(f"machine: {machine()}; {len(items)} clips, {len(sounds)} non-speech sounds\n")
    totals = Counter(corpus for corpus, _, _ in items)
    rows, missed_by_label = [], {}
    for fallback in args.fallbacks:
        vad = SileroVad(VadSettings(fallback_threshold=fallback))
        missed = [i for i, x in enumerate(audio) if not vad.speech_regions(x)]
        by_corpus = Counter(items[i][0] for i in missed)
        false_alarms = [name for name, x in sounds.items() if vad.speech_regions(x)]
        name = "off" if fallback >= vad.settings.threshold else f"{fallback:g}"
        rows.append(
            [
                name,
                *(f"{by_corpus[c]} / {totals[c]}" for c in sorted(totals)),
                f"{len(false_alarms)} / {len(sounds)}",
                ", ".join(false_alarms) or "-",
            ]
        )
        missed_by_label[name] = Counter(f"{items[i][0]}: {items[i][1]}" for i in missed)
    headers = ["fallback", *(f"{c} clips with no speech" for c in sorted(totals))]
    print_table([*headers, "sounds with speech", "which"], rows)
    print()
    for name, counts in missed_by_label.items():
        listed = ", ".join(f"{label} {n}" for label, n in counts.most_common()) or "none"
        print(f"fallback {name}, clips with no speech by label: {listed}")

    # What users get from the non-speech sounds: the whole pipeline, default settings.
    from ethostral_serve.engine import Engine
    from ethostral_serve.pipeline.compose import TranscribeOptions

    engine = Engine.load(Settings())
    texts = []
    for name, x in sounds.items():
        session = engine.run(wav_bytes(x), f"{name}.wav", TranscribeOptions())
        texts.append([name, len(session.segments), " ".join(g.text for g in session.segments)])
    print("\nthe whole pipeline (default settings) on the non-speech sounds:")
    print_table(["sound", "segments", "text"], texts)


if __name__ == "__main__":
    main()
