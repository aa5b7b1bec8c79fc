"""Soak test against a running service: uploads and real-time streams at once, for a while.

    .venv/bin/python -m benchmarks.soak [--url http://127.0.0.1:8000] [--uploaders 2]
        [--streams 2] [--minutes 15] [--seconds 60] [--api-key KEY] [--out DIR]

``--uploaders`` threads each upload a LibriSpeech two-speaker conversation of about
``--seconds`` (speakers 3080 and 533, which no test uses) in a loop; ``--streams``
threads each stream another one at real time (100 ms PCM16 chunks) in a loop. Every
session is then fetched back by id to prove it was stored. Every 30 s the resident
memory (RSS) of each Serve replica, the proxy and the controller is sampled (processes
found by their Ray titles, ``ServeReplica:<app>:<deployment>``).

Prints: errors by kind, request counts, p50/p95 of upload latency and of the time from
``stop`` to the stored session, sessions stored, and RSS per process over time with the
change from the 3-minute mark to the end. With ``--out``, writes ``soak.json`` and
``soak_rss.png`` (RSS over time).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

from benchmarks.common import machine, print_table
from benchmarks.processes import serve_roles
from benchmarks.serve_upload import conversation, wav_bytes

SAMPLE_RATE = 16_000
RSS_EVERY_S = 30.0
SETTLED_S = 180.0  # RSS is compared from this point (after warm-up) to the end


@dataclass
class Results:
    """What every worker thread records (under ``lock``)."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    upload_s: list[float] = field(default_factory=list)
    session_after_stop_s: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)
    sessions: list[tuple[str, str]] = field(default_factory=list)  # (kind, id)
    rss: list[dict[str, float]] = field(default_factory=list)

    def error(self, kind: str, what: str) -> None:
        with self.lock:
            self.errors[f"{kind}: {what[:120]}"] += 1


def uploader(url: str, audio: bytes, headers: dict[str, str], until: float, out: Results) -> None:
    """Upload ``audio`` again and again until ``until``."""
    with httpx.Client(timeout=600, headers=headers) as client:
        while time.monotonic() < until:
            t0 = time.monotonic()
            try:
                r = client.post(
                    f"{url}/transcribe", files={"file": ("soak.wav", audio, "audio/wav")}
                )
            except httpx.HTTPError as exc:
                out.error("upload", type(exc).__name__)
                time.sleep(1.0)
                continue
            if r.status_code != 200:
                out.error("upload", f"{r.status_code} {r.text}")
                time.sleep(1.0)
                continue
            with out.lock:
                out.upload_s.append(time.monotonic() - t0)
                out.sessions.append(("upload", r.json()["id"]))


def streamer(
    url: str, samples: np.ndarray, api_key: str | None, until: float, out: Results
) -> None:
    """Stream ``samples`` at real time again and again until ``until``."""
    from ethostral_serve.stream_client import stream_audio

    while time.monotonic() < until:
        stopped_at = None
        last: dict[str, object] = {}
        try:
            for event, received_at, run in stream_audio(
                url, samples, {"language": "en"}, api_key=api_key
            ):
                last = event
                if event["type"] == "session":
                    stopped_at = run.sent_at[-1] if run.sent_at else None
                    with out.lock:
                        if stopped_at is not None:
                            out.session_after_stop_s.append(received_at - stopped_at)
                        out.sessions.append(("stream", str(event["session_id"])))
        except OSError as exc:
            out.error("stream", type(exc).__name__)
            time.sleep(1.0)
            continue
        if last.get("type") != "session":
            out.error("stream", f"ended with {json.dumps(last)[:100]}")
            time.sleep(1.0)


def rss_sampler(until: float, t0: float, out: Results) -> None:
    """RSS (MB) of each Serve process every ``RSS_EVERY_S`` until ``until``."""
    import psutil

    while True:
        sample: dict[str, float] = {"t_s": round(time.monotonic() - t0, 1)}
        for role, pid in serve_roles().items():
            try:
                sample[role] = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                continue
        with out.lock:
            out.rss.append(sample)
        if time.monotonic() + RSS_EVERY_S > until + 1:
            return
        time.sleep(RSS_EVERY_S)


def check_stored(url: str, headers: dict[str, str], out: Results) -> tuple[int, int]:
    """(stored, missing) among the sessions the run was given ids for."""
    stored = missing = 0
    with httpx.Client(timeout=30, headers=headers) as client:
        for _, session_id in out.sessions:
            r = client.get(f"{url}/sessions/{session_id}")
            if r.status_code == 200 and r.json()["id"] == session_id:
                stored += 1
            else:
                missing += 1
                out.error("stored", f"{session_id}: {r.status_code}")
    return stored, missing


def percentiles(xs: list[float]) -> tuple[str, str]:
    """p50 and p95 as text ('-' without data)."""
    if not xs:
        return "-", "-"
    return f"{np.percentile(xs, 50):.1f}", f"{np.percentile(xs, 95):.1f}"


def merged_roles(rss: list[dict[str, float]]) -> list[dict[str, float]]:
    """Samples with each process under its deployment's name (a busy replica's title
    carries the method it serves, e.g. ``EthostralModel.handle_request_with_rejection``)."""
    return [{k.split(".", 1)[0]: v for k, v in sample.items()} for sample in rss]


def rss_table(rss: list[dict[str, float]]) -> tuple[list[str], list[list[object]]]:
    """Headers and rows: RSS per process over time."""
    roles = sorted({k for s in rss for k in s if k != "t_s"})
    rows = [
        [f"{s['t_s'] / 60:.1f}", *[f"{s[r]:.0f}" if r in s else "-" for r in roles]] for s in rss
    ]
    return ["minute", *[f"{r} MiB" for r in roles]], rows


def rss_change(rss: list[dict[str, float]]) -> dict[str, float]:
    """Per process: RSS at the end relative to the first sample at or after 3 minutes (%)."""
    settled = next((s for s in rss if s["t_s"] >= SETTLED_S), None)
    if settled is None or not rss:
        return {}
    end = rss[-1]
    return {
        r: 100.0 * (end[r] - settled[r]) / settled[r]
        for r in settled
        if r != "t_s" and r in end and settled[r] > 0
    }


def plot(rss: list[dict[str, float]], path: Path) -> None:
    """RSS over time, one line per process."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = sorted({k for s in rss for k in s if k != "t_s"})
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for role in roles:
        pts = [(s["t_s"] / 60, s[role]) for s in rss if role in s]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=role)
    ax.axvline(SETTLED_S / 60, color="grey", linestyle=":", label="3 min")
    ax.set_xlabel("minutes")
    ax.set_ylabel("RSS (MiB)")
    ax.set_title("Serve processes during the soak")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def render(report: dict[str, object], out: Path | None) -> None:
    """Print the tables of a run (and write its plot to ``out``)."""
    upload_s = list(report["upload_s"])  # type: ignore[call-overload]
    after_stop_s = list(report["session_after_stop_s"])  # type: ignore[call-overload]
    errors: dict[str, int] = dict(report["errors"])  # type: ignore[call-overload]
    rss = merged_roles(list(report["rss"]))  # type: ignore[call-overload]
    print(f"machine: {report['machine']}; {float(report['minutes']):.1f} min")  # type: ignore[arg-type]
    up50, up95 = percentiles(upload_s)
    st50, st95 = percentiles(after_stop_s)
    stored, missing = report["stored"], report["missing"]
    print_table(
        ["what", "done", "p50 s", "p95 s"],
        [
            ["uploads (request → stored session)", len(upload_s), up50, up95],
            ["streams (stop → session event)", len(after_stop_s), st50, st95],
            ["sessions fetched back", f"{stored} of {stored + missing}", "", ""],  # type: ignore[operator]
            ["errors", sum(errors.values()), "", ""],
        ],
    )
    for what, n in sorted(errors.items(), key=lambda kv: -kv[1]):
        print(f"  {n} × {what}")
    print()
    headers_rss, rows = rss_table(rss)
    print_table(headers_rss, rows)
    change = rss_change(rss)
    if change:
        print(
            "\nRSS at the end against the 3-minute mark: "
            + ", ".join(f"{r} {c:+.1f} %" for r, c in sorted(change.items()))
        )
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        plot(rss, out / "soak_rss.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--uploaders", type=int, default=2)
    ap.add_argument("--streams", type=int, default=2)
    ap.add_argument("--minutes", type=float, default=15.0)
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each recording")
    ap.add_argument("--api-key", default=None, help="for a service with auth.required")
    ap.add_argument("--out", type=Path, default=None, help="write soak.json and the plot here")
    ap.add_argument("--render", type=Path, default=None, help="print a saved soak.json again")
    args = ap.parse_args()
    if args.render is not None:
        render(json.loads(args.render.read_text()), args.out)
        return

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    upload_audio, _, _ = conversation(["3080", "533"], args.seconds, seed=1)
    stream_audio_samples, _, _ = conversation(["533", "3080"], args.seconds, seed=2)
    audio = wav_bytes(upload_audio)
    out = Results()
    t0 = time.monotonic()
    until = t0 + args.minutes * 60
    threads = [threading.Thread(target=rss_sampler, args=(until, t0, out))]
    threads += [
        threading.Thread(target=uploader, args=(args.url, audio, headers, until, out))
        for _ in range(args.uploaders)
    ]
    threads += [
        threading.Thread(
            target=streamer, args=(args.url, stream_audio_samples, args.api_key, until, out)
        )
        for _ in range(args.streams)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    stored, missing = check_stored(args.url, headers, out)
    print(
        f"{args.uploaders} uploaders of {len(upload_audio) / SAMPLE_RATE:.0f} s, "
        f"{args.streams} real-time streams of {len(stream_audio_samples) / SAMPLE_RATE:.0f} s "
        f"against {args.url}"
    )
    report = {
        "machine": machine(),
        "minutes": elapsed / 60,
        "upload_s": out.upload_s,
        "session_after_stop_s": out.session_after_stop_s,
        "stored": stored,
        "missing": missing,
        "errors": dict(out.errors),
        "rss": out.rss,
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "soak.json").write_text(json.dumps(report, indent=1))
    render(report, args.out)


if __name__ == "__main__":
    main()
