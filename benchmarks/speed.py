"""Speed of the whole CLI next to bare faster-whisper on the same file.

    .venv/bin/python -m benchmarks.speed [--file F.wav] [--repeat 2] [--seed 0]
        [--language en|auto] [--whisperx-python /path/to/venv/bin/python]

Without ``--file`` it builds a ~130 s four-speaker conversation from the shared
LibriSpeech utterances. Each side runs as a fresh process, so imports and model loading
are included: bare = faster-whisper Whisper base int8, beam 5, English, no VAD;
CLI = ``ethostral transcribe FILE --language en`` with diarization and emotion on
(``--language auto``: both detect the language). A warm in-process run then gives the
time of each pipeline stage and the emotion cost per segment.

With ``--whisperx-python`` (the interpreter of a separate venv holding ``whisperx==3.8.6``,
which pins torch 2.8), WhisperX runs in the same rounds: the same Whisper base dir, int8,
beam 5, English, batch 8, its bundled pyannote VAD, no alignment or diarization.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, bare_whisper_s, machine, print_table, whisper_base_args


def _timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1] if out.stdout else ""


# WhisperX's batched pipeline, loading included. Audio is read from the 16-bit WAV here
# (whisperx.load_audio needs an ffmpeg binary), which costs milliseconds.
_WHISPERX = """
import sys, time, wave
t0 = time.perf_counter()
import numpy as np
import whisperx
model = whisperx.load_model(sys.argv[2], "cpu", compute_type="int8", language="en",
                            vad_method="pyannote", threads=int(sys.argv[3]))
t1 = time.perf_counter()
with wave.open(sys.argv[1]) as w:
    assert w.getframerate() == 16000 and w.getnchannels() == 1 and w.getsampwidth() == 2
    x = np.frombuffer(w.readframes(w.getnframes()), "<i2").astype(np.float32) / 32768
result = model.transcribe(x, batch_size=8, language="en")
text = " ".join(s["text"] for s in result["segments"])
print(f"load={t1 - t0:.2f} transcribe={time.perf_counter() - t1:.2f} words={len(text.split())}")
"""


def _whisperx_s(python: str, path: Path) -> tuple[float, str]:
    env = {**os.environ, "PYANNOTE_METRICS_ENABLED": "false", "OMP_WAIT_POLICY": "PASSIVE"}
    cmd = [python, "-c", _WHISPERX, str(path), *whisper_base_args()]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env)
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1]


def _conversation(seed: int, folder: Path) -> Path:
    from benchmarks.diarization import Case, librispeech_by_speaker, make_conversation, write_case

    samples, ref = make_conversation(librispeech_by_speaker(), 4, 130.0, seed=4000 + seed)
    case = Case("librispeech-4spk", f"conversation-4spk-seed{seed}", samples, ref)
    write_case(case, folder)
    return folder / f"{case.uri}.wav"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--whisperx-python", help="python of a venv with whisperx==3.8.6")
    parser.add_argument(
        "--language",
        default="en",
        help="'en' (default) or 'auto': the CLI without --language and bare faster-whisper "
        "detecting the language",
    )
    args = parser.parse_args()

    python = sys.executable
    cli = str(Path(python).with_name("ethostral"))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or _conversation(args.seed, Path(tmp))
        from ethostral_serve.audio import decode_audio

        duration = decode_audio(path).duration_s
        subprocess.run([cli, "models", "check"], check=True, capture_output=True)
        bare_runs: list[float] = []
        cli_runs: list[float] = []
        whisperx_runs: list[float] = []
        for _ in range(args.repeat):
            seconds, detail = bare_whisper_s(path, args.language)
            bare_runs.append(seconds)
            print(f"bare: {seconds:.1f} s ({detail})", file=sys.stderr)
            out = Path(tmp) / "session.json"
            told = [] if args.language == "auto" else ["--language", args.language]
            seconds, _ = _timed([cli, "transcribe", str(path), *told, "-q", "-o", str(out)])
            cli_runs.append(seconds)
            print(f"cli:  {seconds:.1f} s", file=sys.stderr)
            if args.whisperx_python:
                seconds, detail = _whisperx_s(args.whisperx_python, path)
                whisperx_runs.append(seconds)
                print(f"whisperx: {seconds:.1f} s ({detail})", file=sys.stderr)
        bare = statistics.median(bare_runs)

        from ethostral_serve.engine import Engine
        from ethostral_serve.pipeline.compose import StageTimes, TranscribeOptions
        from ethostral_serve.settings import Settings

        engine = Engine.load(Settings())
        times = StageTimes()
        language = None if args.language == "auto" else args.language
        options = TranscribeOptions(language=language)
        session = engine.run(path, path.name, options, times=times)

    print(f"Speed on {duration:.1f} s of audio ({path.name}); {machine()}")
    told = "no language" if args.language == "auto" else f"--language {args.language}"
    runs = [
        (f"bare faster-whisper base int8 beam 5, {args.language}", bare_runs),
        (f"ethostral transcribe {told} (diarize + emotion)", cli_runs),
    ]
    if whisperx_runs:
        runs.append(("WhisperX 3.8.6 batched (batch 8, pyannote VAD)", whisperx_runs))
    rows = []
    for name, times_s in runs:
        wall = statistics.median(times_s)
        rows.append(
            [
                name,
                f"{wall:.1f} ({min(times_s):.1f}–{max(times_s):.1f})",
                f"{duration / wall:.1f}",
                f"{wall / duration:.3f}",
                f"{wall / bare:.2f}",
            ]
        )
    headers = ["run (fresh process, loading included)", "wall s (median; min–max)"]
    print_table([*headers, "× real time", "RTF", "÷ bare"], rows)
    n = max(1, len(session.segments))
    rows = [[k, f"{v:.2f}", f"{1000 * v / duration:.1f}"] for k, v in times.seconds.items()]
    rows.append(
        [
            "emotion per segment (ms)",
            f"{1000 * times.seconds.get('emotion', 0) / n:.2f}",
            f"{n} segments",
        ]
    )
    print()
    print("Warm in-process run, per stage")
    print_table(["stage", "seconds", "ms per audio second"], rows)
    print(f"\nspeakers found: {len({s.speaker for s in session.segments})}")


if __name__ == "__main__":
    main()
