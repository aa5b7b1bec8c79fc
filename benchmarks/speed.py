"""Speed of the whole CLI next to bare faster-whisper on the same file.

    .venv/bin/python -m benchmarks.speed [--file F.wav] [--repeat 2] [--seed 0]

Without ``--file`` it builds a ~130 s four-speaker conversation from the shared
LibriSpeech utterances. Each side runs as a fresh process, so imports and model loading
are included: bare = faster-whisper Whisper base int8, beam 5, language detected;
CLI = ``ethostral transcribe FILE`` with diarization and emotion on. A warm in-process
run then gives the time of each pipeline stage and the emotion cost per segment.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import REPO, machine, print_table

BARE = """
import sys, time
t0 = time.perf_counter()
from faster_whisper import WhisperModel
from ethostral_serve.backends.whisper import default_cpu_threads
from ethostral_serve.backends.whisper_models import resolve_whisper_model
from ethostral_serve.settings import Settings
s = Settings()
model = WhisperModel(str(resolve_whisper_model("base", s.cache_dir)), device="cpu",
                     compute_type="int8", cpu_threads=default_cpu_threads())
t1 = time.perf_counter()
segments, info = model.transcribe(sys.argv[1], beam_size=5)
text = " ".join(seg.text for seg in segments)
print(f"load={t1 - t0:.2f} transcribe={time.perf_counter() - t1:.2f} words={len(text.split())}")
"""


def _timed(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO)
    return time.perf_counter() - t0, out.stdout.strip().splitlines()[-1] if out.stdout else ""


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
    args = parser.parse_args()

    python = sys.executable
    cli = str(Path(python).with_name("ethostral"))
    with tempfile.TemporaryDirectory() as tmp:
        path = args.file or _conversation(args.seed, Path(tmp))
        from ethostral_serve.audio import decode_audio

        duration = decode_audio(path).duration_s
        subprocess.run([cli, "models", "check"], check=True, capture_output=True)
        bare_runs, cli_runs = [], []
        for _ in range(args.repeat):
            seconds, detail = _timed([python, "-c", BARE, str(path)])
            bare_runs.append(seconds)
            print(f"bare: {seconds:.1f} s ({detail})", file=sys.stderr)
            out = Path(tmp) / "session.json"
            seconds, _ = _timed([cli, "transcribe", str(path), "-q", "-o", str(out)])
            cli_runs.append(seconds)
            print(f"cli:  {seconds:.1f} s", file=sys.stderr)
        bare, full = statistics.median(bare_runs), statistics.median(cli_runs)

        from ethostral_serve.engine import Engine
        from ethostral_serve.pipeline.compose import StageTimes, TranscribeOptions
        from ethostral_serve.settings import Settings

        engine = Engine.load(Settings())
        times = StageTimes()
        session = engine.run(path, path.name, TranscribeOptions(), times=times)

    print(f"Speed on {duration:.1f} s of audio ({path.name}); {machine()}")
    print_table(
        [
            "run (fresh process, loading included)",
            "wall s (median)",
            "× real time",
            "RTF",
            "÷ bare ASR",
        ],
        [
            [
                "bare faster-whisper base int8 beam 5",
                f"{bare:.1f}",
                f"{duration / bare:.1f}",
                f"{bare / duration:.3f}",
                "1.00",
            ],
            [
                "ethostral transcribe (diarize + emotion)",
                f"{full:.1f}",
                f"{duration / full:.1f}",
                f"{full / duration:.3f}",
                f"{full / bare:.2f}",
            ],
        ],
    )
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
