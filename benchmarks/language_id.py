"""Which language the embedded default finds in files sent without one.

    .venv/bin/python -m benchmarks.language_id [--seeds 0 1 2] [--windows 6]

Each file goes through the pipeline's VAD and ASR windows, then three rules pick its
language with Whisper base (``ethostral_serve.pipeline.language_id``):

- first window: Whisper's own rule, the first window's most probable language;
- vote: the probabilities of the first ``--windows`` windows with speech, pooled;
- vote + drafts (the rule of the Ray Serve graph and of Ethostral): an unsure vote's
  candidates are drafted and the one whose drafts fail least is kept;
- in transcribe (the embedded default's rule, ``WhisperAsr.transcribe``): as vote +
  drafts, but the leader is checked on its recognition of the windows rather than on
  drafts. Run only where the vote is unsure (a sure vote is the same path as before),
  together with the seconds this costs over the same transcription told the language.

Files: LibriSpeech conversations clean, far-field and long far-field; the AMI excerpts
and the phone-style call of ../shared (all English); LibriVox and JFK (English); and
each EmoDB speaker's clips joined (German). The table gives each file's language by
each rule and the seconds the drafts rule took.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, machine, print_table
from benchmarks.diarization import (
    ami_cases,
    far_field_cases,
    librispeech_cases,
    long_far_field_cases,
)
from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.pipeline.language_id import LanguageVote


def _files(seeds: Sequence[int]) -> list[tuple[str, str, np.ndarray, str]]:
    """``(set, name, samples, language)`` of every file."""
    out = []
    clean = librispeech_cases(seeds)
    for case in clean:
        out.append((case.group, case.uri, case.samples, "en"))
    for case in far_field_cases(clean) + long_far_field_cases(seeds):
        out.append((case.group, case.uri, case.samples, "en"))
    for case in ami_cases():
        if case.reference:
            out.append(("ami+call", case.uri, case.samples, "en"))
    for path in sorted((DATA / "asr" / "librivox").glob("*.wav")):
        out.append(("librivox+jfk", path.stem[-4:], decode_audio(path).samples, "en"))
    jfk = DATA / "asr" / "jfk" / "jfk.flac"
    out.append(("librivox+jfk", "jfk", decode_audio(jfk).samples, "en"))
    out += _emodb()
    return out


def _emodb() -> list[tuple[str, str, np.ndarray, str]]:
    """Each EmoDB speaker's clips (2 s each) joined with 0.3 s of silence: German."""
    folder = DATA / "emotion" / "emodb"
    by_speaker: dict[str, list[Path]] = defaultdict(list)
    for line in (folder / "labels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        path, speaker = line.split("\t")[:2]
        by_speaker[speaker].append(folder / path)
    gap = np.zeros(int(0.3 * SAMPLE_RATE), np.float32)
    out = []
    for speaker, paths in sorted(by_speaker.items()):
        clips = [decode_audio(p).samples for p in paths[:30]]
        samples = np.concatenate([x for clip in clips for x in (clip, gap)])
        out.append(("emodb (German)", f"speaker {speaker}", samples, "de"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--windows", type=int, default=None, help="asr.language_windows")
    args = parser.parse_args()

    from ethostral_serve.engine import Engine
    from ethostral_serve.pipeline.chunks import build_chunks
    from ethostral_serve.settings import AsrSettings, Settings

    asr_settings = AsrSettings()
    if args.windows is not None:
        asr_settings = AsrSettings(language_windows=args.windows)
    settings = Settings(asr=asr_settings)
    engine = Engine.load(settings, diarize=False, emotion=False)
    asr = engine.model.asr  # type: ignore[attr-defined]
    print(f"machine: {machine()}; Whisper base, language_windows {asr_settings.language_windows}")
    rows = []
    right: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for group, name, samples, truth in _files(args.seeds):
        regions = engine.vad.speech_regions(samples)
        chunks = build_chunks(regions, settings.vad.max_chunk_s)
        windows = [c.samples(samples, SAMPLE_RATE) for c in chunks]
        vote = LanguageVote(asr_settings.language_windows)
        first = ""
        for window in windows:
            if vote.full or len(window) < SAMPLE_RATE // 10:
                continue
            ranking = asr.language_ranking(window)
            first = first or ranking[0][0]
            vote.add(ranking, len(window) / SAMPLE_RATE)
        lead = vote.leader()
        t0 = time.perf_counter()
        decided = asr.identify_language(windows)
        took = time.perf_counter() - t0
        found = {
            "first window": first,
            "vote": lead[0] if lead else "",
            "vote + drafts": decided[0] if decided else "",
        }
        extra = ""
        if vote.unsure:
            found["in transcribe"], extra = _transcribed(asr, samples, chunks, truth)
        else:
            found["in transcribe"] = found["vote + drafts"]
        for rule, language in found.items():
            right[(group, rule)][0] += language == truth
            right[(group, rule)][1] += 1
        probability = f"{lead[1]:.2f}" if lead else ""
        cells = [*found.values(), probability, f"{took:.2f}", extra]
        rows.append([group, name, truth, len(windows), *cells])
    print_table(
        [
            "set",
            "file",
            "spoken",
            "windows",
            "first window",
            "vote",
            "vote + drafts",
            "in transcribe",
            "pooled p",
            "s (drafts)",
            "transcribe +s",
        ],
        rows,
    )
    print()
    rules = ["first window", "vote", "vote + drafts", "in transcribe"]
    sets = sorted({g for g, _ in right})
    summary = [[g, *(f"{right[(g, r)][0]}/{right[(g, r)][1]}" for r in rules)] for g in sets]
    totals = [sum(right[(g, r)][0] for g in sets) for r in rules]
    count = sum(right[(g, rules[0])][1] for g in sets)
    summary.append(["all", *(f"{t}/{count}" for t in totals)])
    print_table(["set (files right)", *rules], summary)


def _transcribed(
    asr: object, samples: np.ndarray, chunks: Sequence[object], told: str
) -> tuple[str, str]:
    """The language ``asr.transcribe`` gives ``samples`` sent without one, and the seconds
    that took over the same transcription told ``told`` (each run once)."""
    t0 = time.perf_counter()
    heard = asr.transcribe(samples, chunks, None).language  # type: ignore[attr-defined]
    t1 = time.perf_counter()
    asr.transcribe(samples, chunks, told)  # type: ignore[attr-defined]
    t2 = time.perf_counter()
    return heard, f"{(t1 - t0) - (t2 - t1):+.2f}"


if __name__ == "__main__":
    main()
