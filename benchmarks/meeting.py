"""Who spoke when on recordings of your own: the whole CLI scored against RTTM references.

    .venv/bin/python -m benchmarks.meeting FILE [FILE ...] --rttm REF.rttm [REF.rttm ...]
        [--uem REF.uem ...] [--language auto|en|...] [--num-speakers N] [--min-speakers N]
        [--max-speakers N] [--bare] [--keep DIR]

Each file goes through ``ethostral transcribe FILE -o session.json`` in a fresh process,
as a user runs it (decoding, model loading, VAD, diarization, ASR and emotion included;
the language detected unless ``--language`` names one), and the Session's segments,
which are what users get, are scored against the file's reference turns:
pyannote.metrics DER with ``collar=0.25`` (the scorer leaves 0.125 s out on each side of
every reference boundary) and overlapped speech scored.
A file's reference is the RTTM turns whose file id is the file's stem (an RTTM holding a
single file id also matches a file of another name); a UEM, when given, bounds the
scored time. Missed, false alarm and confusion are percentages of reference speech;
"exclusive bound" is the lowest DER that any transcript with one speaker at a time can
reach on the file (overlapped speech missed once), next to which a Session's DER should
be read. With ``--bare``, bare faster-whisper base (int8, beam 5, no VAD) runs on the
same file in a fresh process, and the CLI's time is also given as a multiple of it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from benchmarks.common import bare_whisper_s, machine, print_table
from benchmarks.diarization import (
    Case,
    Score,
    exclusive_oracle,
    read_rttm,
    read_uem,
    reference_for,
    score,
)

Turn = tuple[float, float, str]


def session_turns(session: dict[str, object]) -> list[Turn]:
    """The Session's segments as ``(start, end, speaker)`` in seconds."""
    segments = session.get("segments")
    if not isinstance(segments, list):
        raise ValueError("not a Session: no 'segments' list")
    return [(s["start_ms"] / 1000, s["end_ms"] / 1000, str(s["speaker"])) for s in segments]


def transcribe(cli: str, path: Path, options: Sequence[str], out: Path) -> float:
    """Run the CLI on one file in a fresh process: wall seconds, the Session in ``out``."""
    t0 = time.perf_counter()
    done = subprocess.run(
        [cli, "transcribe", str(path), *options, "-q", "-o", str(out)],
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"ethostral transcribe {path} failed: {done.stderr.strip()[-500:]}")
    return seconds


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+", metavar="FILE")
    parser.add_argument("--rttm", type=Path, nargs="+", required=True)
    parser.add_argument("--uem", type=Path, nargs="*", default=[])
    parser.add_argument(
        "--language", default="auto", help="passed to the CLI (default 'auto': detected)"
    )
    for flag in ("--num-speakers", "--min-speakers", "--max-speakers"):
        parser.add_argument(flag, type=int, default=None)
    parser.add_argument("--bare", action="store_true", help="time bare faster-whisper too")
    parser.add_argument("--keep", type=Path, default=None, help="keep each Session JSON here")
    args = parser.parse_args(argv)

    from ethostral_serve.audio import decode_audio

    references: dict[str, list[Turn]] = {}
    for rttm in args.rttm:
        references.update(read_rttm(rttm))
    uems: dict[str, tuple[float, float]] = {}
    for uem in args.uem:
        uems.update(read_uem(uem))
    options = [] if args.language == "auto" else ["--language", args.language]
    for flag in ("num_speakers", "min_speakers", "max_speakers"):
        if getattr(args, flag) is not None:
            options += [f"--{flag.replace('_', '-')}", str(getattr(args, flag))]
    cli = str(Path(sys.executable).with_name("ethostral"))
    print(f"machine: {machine()}; ethostral transcribe {' '.join(options)}".rstrip())
    print("Session segments against the reference: collar 0.25 s, overlap scored\n")
    rows, total = [], Score()
    with tempfile.TemporaryDirectory() as tmp:
        for path in args.files:
            found_ref = reference_for(path, references)
            if found_ref is None:
                raise SystemExit(f"{path}: no RTTM turns for file id {path.stem!r}")
            uri, reference = found_ref
            case = Case("meeting", uri, decode_audio(path).samples, reference, uems.get(uri))
            out = (args.keep or Path(tmp)) / f"{path.stem}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            seconds = transcribe(cli, path, options, out)
            hypothesis = session_turns(json.loads(out.read_text(encoding="utf-8")))
            result = score(case, hypothesis)
            total.add(result)
            row = [
                path.name,
                f"{case.duration:.1f}",
                case.speakers,
                len({spk for _, _, spk in hypothesis}),
                *result.cells(),
                score(case, exclusive_oracle(case)).cells()[0],
                f"{seconds:.1f}",
            ]
            if args.bare:
                bare, _ = bare_whisper_s(path, args.language)
                row += [f"{bare:.1f}", f"{seconds / bare:.2f}x"]
            rows.append(row)
    headers = ["file", "dur s", "ref spk", "found", "DER %", "miss %", "FA %", "conf %"]
    headers += ["exclusive bound %", "CLI s"]
    if args.bare:
        headers += ["bare s", "CLI / bare"]
    print_table(headers, rows)
    if len(rows) > 1:
        print(f"\npooled over {len(rows)} files: DER {total.cells()[0]} %")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
