"""Size and encoding time of kept audio (``store_audio``): Ogg/Opus 24 kbit/s per minute.

    .venv/bin/python -m benchmarks.playback_audio [--minutes 10] [--repeats 3]

Two kinds of real audio, each repeated to ``--minutes``: read speech (LibriSpeech
test-other utterances back to back) and a far-field meeting (the AMI excerpts of
pyannote-debug). Each is encoded whole with :func:`ethostral_serve.playback.encode_playback`
(what an upload or job does after its run), ``--repeats`` times; the median CPU and wall
time are reported per minute of audio, with the bytes kept per minute and per hour.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from benchmarks.common import DATA, librispeech, machine, print_table
from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.playback import BITRATE, encode_playback


def _repeat_to(samples: np.ndarray, minutes: float) -> np.ndarray:
    n = int(minutes * 60 * SAMPLE_RATE)
    return np.tile(samples, -(-n // len(samples)))[:n]


def _sources(minutes: float) -> dict[str, np.ndarray]:
    speech = [decode_audio(p).samples for p, _, _ in librispeech(60)]
    meeting = [
        decode_audio(p).samples
        for p in sorted((DATA / "diarization" / "pyannote-debug").glob("*.wav"))
    ]
    return {
        "read speech (LibriSpeech)": _repeat_to(np.concatenate(speech), minutes),
        "meeting (AMI, far-field)": _repeat_to(np.concatenate(meeting), minutes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows = []
    for name, samples in _sources(args.minutes).items():
        minutes = len(samples) / SAMPLE_RATE / 60
        cpu, wall, size = [], [], 0
        for _ in range(args.repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            size = len(encode_playback(samples))
            cpu.append(time.process_time() - c0)
            wall.append(time.perf_counter() - w0)
        rows.append(
            (
                name,
                f"{minutes:g}",
                f"{size / minutes / 1000:.0f} kB",
                f"{size / minutes * 60 / 1e6:.1f} MB",
                f"{statistics.median(cpu) / minutes * 1000:.0f} ms",
                f"{statistics.median(wall) / minutes * 1000:.0f} ms",
            )
        )
    print(f"Ogg/Opus {BITRATE // 1000} kbit/s, 16 kHz mono; {machine()}")
    print_table(["audio", "minutes", "kept / min", "kept / hour", "CPU / min", "wall / min"], rows)


if __name__ == "__main__":
    main()
