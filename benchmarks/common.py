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
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |")
