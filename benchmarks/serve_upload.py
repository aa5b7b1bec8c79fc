"""End-to-end upload against a running service (``serve run serve_config.yaml``).

    .venv/bin/python -m benchmarks.serve_upload [--url http://127.0.0.1:8000]
        [--speakers 3080 533] [--seconds 87] [--repeat 3] [--out DIR]

Builds a two-speaker conversation from LibriSpeech test-other utterances of the given
speakers (no test uses 3080 or 533), alternating speakers with 0.4-1.0 s pauses until
``--seconds`` is reached, and uploads it as WAV and as AAC-in-MP4 (.m4a). For each
upload it prints the wall time from the first byte sent to the last byte received, the
real-time factor, the speakers found, how much of the segment time carries its true
speaker's majority label ("speaker agreement") and the WER against the LibriSpeech transcripts;
then checks that GET returns the identical body, and that DELETE then GET gives 404.
"""

from __future__ import annotations

import argparse
import csv
import io
import time
from fractions import Fraction
from pathlib import Path

import numpy as np

from benchmarks.common import DATA, machine, print_table, speaker_agreement, wer_counts

SAMPLE_RATE = 16_000


def conversation(
    speakers: list[str], seconds: float, seed: int = 0
) -> tuple[np.ndarray, str, list[tuple[float, float, str]]]:
    """Samples, reference text and (start, end, speaker) turns."""
    from ethostral_serve.audio import decode_audio

    root = DATA / "asr" / "librispeech-test-other"
    with (root / "transcripts.tsv").open(encoding="utf-8") as fh:
        rows = [r for r in csv.DictReader(fh, delimiter="\t") if r["speaker"] in speakers]
    pools = {s: [r for r in rows if r["speaker"] == s] for s in speakers}
    rng = np.random.default_rng(seed)
    parts, refs, turns = [], [], []
    t = 0.0
    i = 0
    while t < seconds and any(pools.values()):
        s = speakers[i % len(speakers)]
        i += 1
        if not pools[s]:
            continue
        row = pools[s].pop(0)
        pause = np.zeros(int(rng.uniform(0.4, 1.0) * SAMPLE_RATE), np.float32)
        x = decode_audio(root / row["path"]).samples
        if t + len(x) / SAMPLE_RATE > seconds + 5:
            continue
        parts += [pause, x]
        t += len(pause) / SAMPLE_RATE
        turns.append((t, t + len(x) / SAMPLE_RATE, s))
        refs.append(row["transcript"])
        t += len(x) / SAMPLE_RATE
    return np.concatenate(parts), " ".join(refs), turns


def wav_bytes(x: np.ndarray) -> bytes:
    """16-bit PCM WAV."""
    import wave

    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return buf.getvalue()


def m4a_bytes(x: np.ndarray) -> bytes:
    """AAC (64 kbit/s, 16 kHz mono) in an MP4 container, as a .m4a file holds it."""
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as out:
        stream = out.add_stream("aac", rate=SAMPLE_RATE, layout="mono")
        stream.bit_rate = 64_000
        frame_size = 1024
        for start in range(0, len(x), frame_size):
            block = x[start : start + frame_size].astype(np.float32)[np.newaxis, :]
            frame = av.AudioFrame.from_ndarray(block, format="fltp", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            frame.time_base = Fraction(1, SAMPLE_RATE)
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def main() -> None:
    import httpx

    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--speakers", nargs="+", default=["3080", "533"])
    parser.add_argument("--seconds", type=float, default=87.0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None, help="also write the audio here")
    parser.add_argument(
        "--concurrency",
        type=int,
        nargs="*",
        default=[2, 4],
        help="then upload the WAV this many times at once (0 values: skip)",
    )
    args = parser.parse_args()

    x, reference, turns = conversation(args.speakers, args.seconds)
    audio_s = len(x) / SAMPLE_RATE
    files = {"talk.wav": wav_bytes(x), "talk.m4a": m4a_bytes(x)}
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (args.out / name).write_bytes(data)
        (args.out / "talk.txt").write_text(reference + "\n", encoding="utf-8")
    print(f"machine: {machine()}; service: {args.url}")
    print(f"audio: {audio_s:.1f} s, {len(turns)} turns of speakers {', '.join(args.speakers)}\n")

    rows = []
    with httpx.Client(base_url=args.url, timeout=600) as client:
        health = client.get("/healthz")
        print(f"GET /healthz → {health.status_code} {health.json()}\n")
        for name, data in files.items():
            for run in range(args.repeat):
                t0 = time.perf_counter()
                r = client.post("/transcribe", files={"file": (name, data)})
                elapsed = time.perf_counter() - t0
                r.raise_for_status()
                body = r.json()
                hyp = " ".join(s["text"] for s in body["segments"])
                wer, _ = wer_counts([reference], [hyp])
                same = client.get(f"/sessions/{body['id']}").json() == body
                deleted = client.delete(f"/sessions/{body['id']}").status_code
                after = client.get(f"/sessions/{body['id']}").status_code
                rows.append(
                    [
                        name,
                        f"{len(data) / 1e6:.2f}",
                        run + 1,
                        f"{elapsed:.2f}",
                        f"{elapsed / audio_s:.3f}",
                        len({s["speaker"] for s in body["segments"]}),
                        f"{100 * speaker_agreement(body['segments'], turns):.1f}",
                        len(body["segments"]),
                        f"{100 * wer:.1f}",
                        "yes" if same else "NO",
                        f"{deleted}/{after}",
                    ]
                )
    headers = ["file", "MB", "run", "end-to-end s", "RTF", "speakers", "speaker agreement %"]
    headers += ["segments"]
    headers += ["WER %", "GET identical", "DELETE/GET"]
    print_table(headers, rows)
    if args.concurrency:
        print()
        _concurrent(args.url, files["talk.wav"], audio_s, args.concurrency)


def _concurrent(url: str, data: bytes, audio_s: float, levels: list[int]) -> None:
    """Upload the same file N times at once: wall time, latency, audio hours per hour."""
    import concurrent.futures as cf

    import httpx

    def one(i: int) -> float:
        t0 = time.perf_counter()
        with httpx.Client(base_url=url, timeout=900) as c:
            r = c.post("/transcribe", files={"file": (f"talk{i}.wav", data)})
            r.raise_for_status()
            c.delete(f"/sessions/{r.json()['id']}")
        return time.perf_counter() - t0

    rows = []
    for n in levels:
        t0 = time.perf_counter()
        with cf.ThreadPoolExecutor(n) as pool:
            latencies = list(pool.map(one, range(n)))
        wall = time.perf_counter() - t0
        rows.append(
            [
                n,
                f"{wall:.1f}",
                f"{np.median(latencies):.1f}",
                f"{max(latencies):.1f}",
                f"{n * audio_s / wall:.1f}",
            ]
        )
    print(f"concurrent uploads of the {audio_s:.0f} s WAV:")
    headers = ["uploads at once", "wall s", "median latency s", "max latency s"]
    print_table([*headers, "audio s per wall s"], rows)


if __name__ == "__main__":
    main()
