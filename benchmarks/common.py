"""Helpers shared by the benchmark scripts: data location, text normalisation, tables."""

from __future__ import annotations

import csv
import os
import platform
import re
import unicodedata
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("ETHOSTRAL_TEST_DATA", REPO.parent / "shared" / "data"))


def machine() -> str:
    """One line describing where a benchmark ran."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return (
        f"{platform.processor() or platform.machine()}, {cores} cores, "
        f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d}"
    )


def normalise(text: str) -> str:
    """Lower case, no punctuation, single spaces (apostrophes inside words kept)."""
    text = unicodedata.normalize("NFKC", text).lower().replace("’", "'")
    text = re.sub(r"[^\w\s']", " ", text)
    text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
    return " ".join(text.split())


def wer_counts(refs: Sequence[str], hyps: Sequence[str]) -> tuple[float, int]:
    """Corpus WER over normalised texts, and the number of reference words."""
    import jiwer

    refs_n = [normalise(r) for r in refs]
    hyps_n = [normalise(h) for h in hyps]
    out = jiwer.process_words(refs_n, hyps_n)
    words = sum(len(r.split()) for r in refs_n)
    return float(out.wer), words


def librispeech(limit: int | None = None) -> list[tuple[Path, str, str]]:
    """(path, speaker, reference) of the shared LibriSpeech test-other utterances."""
    root = DATA / "asr" / "librispeech-test-other"
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    items = [(root / r["path"], r["speaker"], r["transcript"]) for r in rows]
    return items[:limit] if limit else items


def print_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print a GitHub-flavoured Markdown table."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")


def speaker_agreement(segments: Sequence[Any], truth: list[tuple[float, float, str]]) -> float:
    """Share of segment time whose label is the majority label of its true speaker.

    ``segments`` are Session segments (or their JSON dicts). Returns 0.0 when two true
    speakers share a majority label.
    """
    votes: dict[str, dict[str, float]] = {}
    for seg in segments:
        s = seg if isinstance(seg, dict) else seg.model_dump()
        mid = (s["start_ms"] + s["end_ms"]) / 2000
        who = next((w for a, b, w in truth if a - 0.3 <= mid <= b + 0.3), None)
        if who:
            votes.setdefault(who, {}).setdefault(s["speaker"], 0.0)
            votes[who][s["speaker"]] += (s["end_ms"] - s["start_ms"]) / 1000
    top = {who: max(v, key=lambda k: v[k]) for who, v in votes.items()}
    if len(set(top.values())) < len(top):
        return 0.0
    total = sum(sum(v.values()) for v in votes.values())
    return sum(v[top[w]] for w, v in votes.items()) / total if total else 0.0


# Bare faster-whisper as the speed reference: a fresh process, loading included,
# Whisper base int8 on CPU with one thread per core, English (BARE_LANGUAGE=auto:
# detected, faster-whisper's own way), beam 5, no VAD, every segment consumed.
# Arguments: model dir, threads, then the files. Prints each file's text on a line of
# its own, then one line: load=… transcribe=… words=…
_BARE_WHISPER = """
import os, sys, time
language = os.environ.get("BARE_LANGUAGE", "en")
language = None if language == "auto" else language
t0 = time.perf_counter()
from faster_whisper import WhisperModel
model = WhisperModel(sys.argv[1], device="cpu", compute_type="int8", cpu_threads=int(sys.argv[2]))
t1 = time.perf_counter()
texts = []
for path in sys.argv[3:]:
    segments, info = model.transcribe(path, language=language, beam_size=5)
    texts.append(" ".join(seg.text.strip() for seg in segments).replace("\\n", " "))
print("\\n".join(texts))
words = sum(len(t.split()) for t in texts)
print(f"load={t1 - t0:.2f} transcribe={time.perf_counter() - t1:.2f} words={words}")
"""


def whisper_base_args() -> list[str]:
    """The bundled Whisper base directory and one thread per core, as arguments for the
    reference scripts run in fresh processes."""
    from ethostral_serve.backends.cores import default_cpu_threads
    from ethostral_serve.backends.whisper_models import resolve_whisper_model
    from ethostral_serve.settings import Settings

    return [str(resolve_whisper_model("base", Settings().cache_dir)), str(default_cpu_threads())]


def bare_whisper(paths: Sequence[Path], language: str = "en") -> tuple[float, str, list[str]]:
    """Bare faster-whisper over ``paths`` in one fresh process (see ``_BARE_WHISPER``;
    ``language`` "auto": detected): wall seconds, the summary line it printed, and each
    file's text."""
    import os
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-c", _BARE_WHISPER, *whisper_base_args(), *map(str, paths)]
    env = {**os.environ, "BARE_LANGUAGE": language}
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=REPO, env=env)
    seconds = time.perf_counter() - t0
    lines = out.stdout.rstrip("\n").split("\n")
    return seconds, lines[-1], lines[:-1]


def bare_whisper_s(path: Path, language: str = "en") -> tuple[float, str]:
    """Wall seconds of bare faster-whisper on ``path`` in a fresh process, and the
    summary line it printed."""
    seconds, summary, _ = bare_whisper([path], language)
    return seconds, summary
