"""A long recording as a job, end to end, against a running service.

    .venv/bin/python -m benchmarks.long_job [--url http://127.0.0.1:8000] [--api-key KEY]
        [--minutes 60] [--chunk-minutes 5] [--no-sync] [--json out.json]

Builds ``--minutes`` of speech from the shared LibriSpeech test-other utterances (in
order, repeated as needed, with 0.4 to 1.2 s pauses), uploads it with ``async=true`` and
follows ``GET /sessions/{id}/events`` to the end. Meanwhile it samples the RSS of every
Serve process on this machine. Then, unless ``--no-sync``, it uploads the same audio cut
into ``--chunk-minutes`` files (at the pause nearest each mark) synchronously, one after
another, and scores both against the reference.

Prints: wall time of the job (202 → done) and of its stages from the events, the time
to the 202, the number of progress events, peak RSS per process, WER of the job and of
the chunked synchronous uploads. A figure is only what this run measured.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import psutil

from benchmarks.common import librispeech, machine, print_table, wer_counts
from benchmarks.processes import serve_roles
from benchmarks.serve_upload import wav_bytes
from ethostral_serve.audio import SAMPLE_RATE, decode_audio
from ethostral_serve.client import Client
from ethostral_serve.schema import Job


def build(minutes: float, seed: int = 0) -> tuple[np.ndarray, list[str], list[int]]:
    """Samples, the reference of each utterance, and the sample where each pause begins."""
    rng = np.random.default_rng(seed)
    items = [(decode_audio(path).samples, ref) for path, _, ref in librispeech()]
    parts: list[np.ndarray] = []
    refs: list[str] = []
    pauses: list[int] = []
    total = 0
    target = int(minutes * 60 * SAMPLE_RATE)
    i = 0
    while total < target:
        samples, ref = items[i % len(items)]
        parts.append(samples)
        refs.append(ref)
        total += samples.size
        pauses.append(total)
        gap = np.zeros(int(rng.uniform(0.4, 1.2) * SAMPLE_RATE), np.float32)
        parts.append(gap)
        total += gap.size
        i += 1
    return np.concatenate(parts).astype(np.float32), refs, pauses


def chunks(
    samples: np.ndarray, refs: list[str], pauses: list[int], minutes: float
) -> list[tuple[np.ndarray, str]]:
    """The audio cut at the pause nearest every ``minutes``, with each piece's reference."""
    step = int(minutes * 60 * SAMPLE_RATE)
    out: list[tuple[np.ndarray, str]] = []
    start = 0
    first_ref = 0
    while start < samples.size:
        mark = start + step
        if mark >= samples.size:
            out.append((samples[start:], " ".join(refs[first_ref:])))
            break
        cut_index = min(range(len(pauses)), key=lambda k: abs(pauses[k] - mark))
        cut = pauses[cut_index]
        out.append((samples[start:cut], " ".join(refs[first_ref : cut_index + 1])))
        start, first_ref = cut, cut_index + 1
    return out


class RssPeaks:
    """Peak RSS (MB) of each Serve process, sampled every ``every_s`` in a thread."""

    def __init__(self, every_s: float = 2.0) -> None:
        self.every_s = every_s
        self.peak: dict[str, float] = {}
        self.first: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            for role, pid in serve_roles().items():
                try:
                    rss = psutil.Process(pid).memory_info().rss / 2**20
                except psutil.NoSuchProcess:
                    continue
                self.first.setdefault(role, rss)
                self.peak[role] = max(self.peak.get(role, 0.0), rss)
            self._stop.wait(self.every_s)


def run_job(
    url: str, api_key: str | None, audio: bytes, path: Path
) -> tuple[dict[str, object], str, list[Job]]:
    """Upload as a job; follow its events. Returns figures, the transcript and the events."""
    path.write_bytes(audio)
    events: list[Job] = []
    with Client(url, api_key=api_key, timeout_s=600) as client:
        t0 = time.monotonic()
        job = client.submit(path, language="en")
        accepted_s = time.monotonic() - t0
        stage_at: dict[str, float] = {}
        for state in client.job_events(job.id):
            now = time.monotonic() - t0
            events.append(state)
            key = state.stage or state.status
            stage_at.setdefault(key, now)
            print(
                f"  {now:7.1f} s  {state.status:<8} {state.stage or '':<8} {state.progress:5.1%}",
                flush=True,
            )
        wall_s = time.monotonic() - t0
        if events[-1].status != "done":
            raise SystemExit(f"the job ended {events[-1].status}: {events[-1].detail}")
        session = client.get(job.id)
    text = " ".join(s.text for s in session.segments)
    figures: dict[str, object] = {
        "job_id": job.id,
        "accepted_s": round(accepted_s, 2),
        "wall_s": round(wall_s, 1),
        "events": len(events),
        "stage_start_s": {k: round(v, 1) for k, v in stage_at.items()},
        "segments": len(session.segments),
        "speakers": len({s.speaker for s in session.segments}),
    }
    return figures, text, events


def run_sync(
    url: str, api_key: str | None, pieces: list[tuple[np.ndarray, str]]
) -> tuple[float, list[str]]:
    """Each piece as a synchronous upload, one after another: (seconds, transcripts)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    texts = []
    t0 = time.monotonic()
    with httpx.Client(timeout=3600, headers=headers) as client:
        for k, (samples, _) in enumerate(pieces):
            files = {"file": (f"piece{k:02d}.wav", wav_bytes(samples), "audio/wav")}
            r = client.post(f"{url}/transcribe", files=files, data={"language": "en"})
            r.raise_for_status()
            texts.append(" ".join(s["text"] for s in r.json()["segments"]))
            print(f"  piece {k + 1}/{len(pieces)} in {time.monotonic() - t0:.0f} s", flush=True)
    return time.monotonic() - t0, texts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=None)
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--chunk-minutes", type=float, default=5.0)
    ap.add_argument("--no-sync", action="store_true", help="skip the chunked synchronous run")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ethostral-long-job"))
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()

    samples, refs, pauses = build(args.minutes)
    audio_s = samples.size / SAMPLE_RATE
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{machine()}; {audio_s / 60:.1f} min of audio, {len(refs)} utterances", flush=True)
    with RssPeaks() as rss:
        figures, text, _ = run_job(
            args.url, args.api_key, wav_bytes(samples), args.workdir / "long.wav"
        )
    job_wer, words = wer_counts([" ".join(refs)], [text])
    report: dict[str, object] = {
        "machine": machine(),
        "audio_s": round(audio_s, 1),
        "words": words,
        "job": figures,
        "job_wer": round(job_wer, 4),
        "rss_start_mb": {k: round(v) for k, v in rss.first.items()},
        "rss_peak_mb": {k: round(v) for k, v in rss.peak.items()},
    }
    if not args.no_sync:
        pieces = chunks(samples, refs, pauses, args.chunk_minutes)
        sync_s, texts = run_sync(args.url, args.api_key, pieces)
        sync_wer, _ = wer_counts([" ".join(r for _, r in pieces)], [" ".join(texts)])
        report.update(sync_pieces=len(pieces), sync_wall_s=round(sync_s, 1))
        report["sync_wer"] = round(sync_wer, 4)

    print()
    print_table(
        ["run", "audio min", "wall s", "RTF", "WER %"],
        [
            [
                "async job (1 file)",
                f"{audio_s / 60:.1f}",
                figures["wall_s"],
                f"{float(figures['wall_s']) / audio_s:.3f}",  # type: ignore[arg-type]
                f"{100 * job_wer:.2f}",
            ],
            *(
                [
                    [
                        f"sync, {report['sync_pieces']} files of ~{args.chunk_minutes:g} min",
                        f"{audio_s / 60:.1f}",
                        report["sync_wall_s"],
                        f"{float(report['sync_wall_s']) / audio_s:.3f}",  # type: ignore[arg-type]
                        f"{100 * float(report['sync_wer']):.2f}",  # type: ignore[arg-type]
                    ]
                ]
                if "sync_wer" in report
                else []
            ),
        ],
    )
    print()
    print_table(
        ["process", "RSS at start MB", "peak RSS MB"],
        [[k, round(rss.first.get(k, 0)), round(v)] for k, v in sorted(rss.peak.items())],
    )
    print()
    print(json.dumps(report, indent=2))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
