"""Many short clips in one ``ethostral transcribe`` call: speed, WER and emotion.

    .venv/bin/python -m benchmarks.short_clips [--clips 240] [--repeat 1]
        [--data ../shared/data/emotion/ravdess] [--speakers 01 02 ...]

Takes ``--clips`` RAVDESS-style clips (about 3.5 s each) spread evenly over the chosen
actors, emotions and statements, and runs the whole CLI once over all of them (a fresh
process, loading included, diarization and emotion on). Beside it, bare faster-whisper
(Whisper base int8, beam 5, English, no VAD) transcribes the same clips in one fresh
process. Prints wall time, RTF (wall ÷ audio), WER against the spoken statement, and for
the CLI the emotion macro-F1 (each clip's label: the one covering most segment time).
The shared actors are in the emotion model's training set, so that F1 is not
speaker-independent. A warm in-process run then splits a clip's time by stage.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, bare_whisper, machine, print_table, wer_counts
from scripts.train_emotion import Clip, corpus_f1, read_ravdess

STATEMENTS = {"1": "Kids are talking by the door", "2": "Dogs are sitting by the door"}


def pick(clips: list[Clip], n: int) -> list[Clip]:
    """``n`` clips spread evenly over the list (ordered by actor, emotion, statement)."""
    if n >= len(clips):
        return clips
    return [clips[int(i)] for i in np.linspace(0, len(clips) - 1, n).round()]


def statement(clip: Clip) -> str:
    """What the actor says: RAVDESS's statement code is the file name's fifth field."""
    return STATEMENTS[clip.path.stem.split("-")[4].lstrip("0")]


def run_cli(files: list[Path], out: Path) -> float:
    """Seconds of one ``ethostral transcribe`` over ``files`` (sessions into ``out``)."""
    cli = str(Path(sys.executable).with_name("ethostral"))
    cmd = [cli, "transcribe", *map(str, files), "-q", "--format", "json", "-o", str(out)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t0


def stage_seconds(clips: list[Clip]) -> dict[str, float]:
    """Mean seconds per clip of each pipeline stage, warm, in this process."""
    from ethostral_serve.engine import Engine
    from ethostral_serve.pipeline.compose import StageTimes, TranscribeOptions
    from ethostral_serve.settings import Settings

    engine = Engine.load(Settings())
    engine.run(clips[0].path, clips[0].path.name, TranscribeOptions())  # warm up
    total: dict[str, float] = {}
    t0 = time.perf_counter()
    for clip in clips:
        times = StageTimes()
        engine.run(clip.path, clip.path.name, TranscribeOptions(), times=times)
        for stage, seconds in times.seconds.items():
            total[stage] = total.get(stage, 0.0) + seconds
    total["whole run"] = time.perf_counter() - t0
    return {stage: seconds / len(clips) for stage, seconds in total.items()}


def score(clips: list[Clip], out: Path) -> tuple[float, float, int]:
    """WER over all clips, emotion macro-F1 and clips with no segment."""
    from ethostral_serve.schema import EMOTION_LABELS

    index = {name: i for i, name in enumerate(EMOTION_LABELS)}
    refs, hyps, pred = [], [], []
    for clip in clips:
        session = json.loads((out / f"{clip.path.stem}.json").read_text(encoding="utf-8"))
        segments = session["segments"]
        refs.append(statement(clip))
        hyps.append(" ".join(s["text"] for s in segments))
        votes = np.zeros(len(EMOTION_LABELS))
        for s in segments:
            if s["emotion"] is not None:
                votes[index[s["emotion"]["label"]]] += max(1, s["end_ms"] - s["start_ms"])
        pred.append(int(np.argmax(votes)) if votes.any() else -1)
    wer, _ = wer_counts(refs, hyps)
    y = np.array([c.label for c in clips])
    p = np.array(pred)
    return wer, corpus_f1(y, p, "ravdess"), int(np.sum(p < 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA / "emotion" / "ravdess")
    parser.add_argument("--clips", type=int, default=240)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--speakers", "--actors", nargs="*", help="only these actors")
    args = parser.parse_args()

    from ethostral_serve.audio import decode_audio

    clips = read_ravdess(args.data)
    if args.speakers:
        wanted = {int(s) for s in args.speakers}
        clips = [c for c in clips if int(c.speaker.rsplit("-", 1)[1]) in wanted]
    clips = pick(clips, args.clips)
    audio_s = sum(decode_audio(c.path).duration_s for c in clips)
    refs = [statement(c) for c in clips]
    cli_walls, bare_walls = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for attempt in range(args.repeat):
            seconds, _, texts = bare_whisper([c.path for c in clips])
            bare_walls.append(seconds)
            print(f"bare: {seconds:.1f} s", file=sys.stderr)
            out = Path(tmp) / str(attempt)
            cli_walls.append(run_cli([c.path for c in clips], out))
            print(f"cli:  {cli_walls[-1]:.1f} s", file=sys.stderr)
        wer, f1, missing = score(clips, out)
    bare_wer, _ = wer_counts(refs, texts)
    actors = sorted({c.speaker for c in clips})
    print(
        f"{len(clips)} clips, {audio_s:.0f} s of audio ({audio_s / len(clips):.1f} s each), "
        f"{len(actors)} actors, each tool one fresh process over all clips; {machine()}"
    )
    rows = []
    for name, walls, err, emotion in (
        ("bare faster-whisper base int8 beam 5, en", bare_walls, bare_wer, "–"),
        ("ethostral transcribe (diarize + emotion)", cli_walls, wer, f"{f1:.3f}"),
    ):
        wall = statistics.median(walls)
        rows.append(
            [
                name,
                f"{wall:.1f} ({min(walls):.1f}–{max(walls):.1f})",
                f"{wall / audio_s:.3f}",
                f"{100 * err:.1f}",
                emotion,
            ]
        )
    print_table(
        ["run", "wall s (median; min–max)", "RTF", "WER %", "emotion macro-F1 (8 labels)"],
        rows,
    )
    print(f"clips with no segment: {missing}")
    print("\nWarm in-process run, mean per clip")
    per_clip = stage_seconds(clips[: min(len(clips), 40)])
    print_table(["stage", "seconds"], [[k, f"{v:.3f}"] for k, v in per_clip.items()])


if __name__ == "__main__":
    main()
